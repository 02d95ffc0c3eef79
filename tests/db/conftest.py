"""A fresh job database on SQLite and on PostgreSQL for each test of the db layer."""

import pytest

from tlq.db import Database, queries


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'tlq.sqlite'}")
    else:
        database = Database(request.getfixturevalue("pg_url"))
    yield database
    database.engine.dispose()


def new_job(db, **fields) -> int:
    """A queued feature-extract job whose message counts as sent."""
    with db.session() as session:
        job = queries.create_job(
            session, task="feature-extract", backbone="test_resnet", params={"data": "/x"}, **fields
        )
        job_id = job.id
    from tlq.db import claims

    with db.session() as session:
        claims.confirm_sent(session, job_id)
    return job_id
