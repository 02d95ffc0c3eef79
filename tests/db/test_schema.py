"""The schema on SQLite and PostgreSQL, and the conditional updates jobs move through."""

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from tlq.db import Database, JobStatus, Metric, queries
from tlq.db.engine import current_revision, head_revision
from tlq.db.models import Base


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request, tmp_path):
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'tlq.sqlite'}")
    else:
        database = Database(request.getfixturevalue("pg_url"))
    yield database
    database.engine.dispose()


def new_job(db, **fields):
    with db.session() as session:
        return queries.create_job(
            session, task="feature-extract", backbone="test_resnet", params={"data": "/x"}, **fields
        ).id


def test_migrations_build_exactly_the_models(db):
    db.ensure_schema()
    assert current_revision(db.engine) == head_revision()
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []


def test_sqlite_runs_in_wal_mode_with_a_busy_timeout(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    with db.engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("PRAGMA busy_timeout")).scalar() >= 10_000


def test_only_one_claim_wins(db):
    job_id = new_job(db)
    with db.session() as session:
        assert queries.claim_job(session, job_id, "w1")
    with db.session() as session:
        assert not queries.claim_job(session, job_id, "w2")  # a duplicate delivery is dropped
        job = queries.get_job(session, job_id)
        assert (job.status, job.worker, job.attempts) == ("running", "w1", 1)
    with db.session() as session:
        assert not queries.finish_job(session, job_id, "w2", JobStatus.SUCCEEDED)
        assert queries.finish_job(session, job_id, "w1", JobStatus.SUCCEEDED)
        assert queries.get_job(session, job_id).status == "succeeded"


def test_a_repeated_metric_replaces_rather_than_duplicates(db):
    job_id = new_job(db)
    with db.session() as session:
        queries.record_metric(session, job_id, "val_acc", 0.5, step=1, epoch=1)
        queries.record_metric(session, job_id, "val_acc", 0.7, step=2, epoch=2)
    with db.session() as session:  # a resumed attempt records epoch 2 again
        queries.record_metric(session, job_id, "val_acc", 0.8, step=2, epoch=2)
    with db.session() as session:
        rows = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step)).all()
        assert [(m.step, m.value) for m in rows] == [(1, 0.5), (2, 0.8)]
        assert queries.last_metrics(session, job_id) == {"val_acc": 0.8}


def test_cancel_stops_a_queued_job_at_once_and_flags_a_running_one(db):
    queued, running = new_job(db), new_job(db)
    with db.session() as session:
        queries.claim_job(session, running, "w1")
    with db.session() as session:
        assert queries.request_cancel(session, queued) == "cancelled"
        assert queries.request_cancel(session, running) == "requested"
        assert queries.request_cancel(session, queued) == "cancelled"
    with db.session() as session:
        assert not queries.claim_job(session, queued, "w2")  # a cancelled job never starts
        assert queries.heartbeat(session, running, "w1") == (True, True)


def test_stale_running_jobs_are_requeued_then_failed_when_out_of_attempts(db):
    import datetime as dt

    from tlq.db.models import utcnow

    job_id = new_job(db, max_attempts=2)
    future = utcnow() + dt.timedelta(seconds=1)
    for attempt in (1, 2):
        with db.session() as session:
            assert queries.claim_job(session, job_id, f"w{attempt}")
        with db.session() as session:
            requeued, failed = queries.requeue_stale_jobs(session, future)
        assert (requeued, failed) == (([job_id], []) if attempt == 1 else ([], [job_id]))
    with db.session() as session:
        job = queries.get_job(session, job_id)
        assert job.status == "failed" and "stopped responding" in job.error and job.attempts == 2
