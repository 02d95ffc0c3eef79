"""Round trips the engine saves on PostgreSQL, and what it must not give up for them."""

import psycopg
import pytest
from sqlalchemy import select, text

from tlq.db import Database, Job, engine, queries
from tlq.db.models import JobStatus


def _terminate_other_backends(pg_url: str) -> int:
    """Ends every other session on the test's database, as a PostgreSQL restart would, and waits until each is gone
    (the server ends a session a moment after it is asked to); returns how many."""
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    assert all(ended for (ended,) in rows)
    return len(rows)


@pytest.mark.parametrize("idle_s", [0.0, 1e9], ids=["pinged after idle", "never pinged"])
def test_a_pooled_connection_the_server_ended_is_replaced_after_it_sat_idle(pg_url, monkeypatch, idle_s):
    db = Database(pg_url)
    with db.session() as session:
        session.execute(select(1))
    assert _terminate_other_backends(pg_url) >= 1
    monkeypatch.setattr(engine, "PING_AFTER_IDLE_S", idle_s)
    if idle_s:  # no ping: the dead connection reaches the statement, which is what the ping is there to prevent
        monkeypatch.setattr(engine, "_heard_from_server", lambda _connection: False)
        with pytest.raises(Exception, match="terminat|closed|connection"), db.session() as session:
            session.execute(select(1))
    else:
        with db.session() as session:
            assert session.execute(select(1)).scalar_one() == 1
    db.engine.dispose()


def test_a_connection_used_within_the_second_is_not_pinged(pg_url):
    db = Database(pg_url)
    pings = []
    real_ping = db.engine.dialect.do_ping
    db.engine.dialect.do_ping = lambda conn: pings.append(1) or real_ping(conn)
    with db.session() as session:
        session.execute(select(1))
    for _ in range(5):
        with db.session() as session:
            session.execute(select(1))
    assert pings == []
    db.engine.dispose()


def test_one_statement_commits_on_its_own_on_postgresql_without_a_transaction(pg_url):
    db = Database(pg_url)
    with db.one_statement() as session:
        job_id = queries.insert_job(session, task="feature-extract", backbone="test_resnet", params={}, queue="cpu")
        dbapi = session.connection().connection.dbapi_connection
        # no BEGIN was sent: the connection is outside any transaction, and the row is already there for others
        assert dbapi.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        with db.read_session() as other:
            assert other.get(Job, job_id).status == JobStatus.QUEUED.value
    db.engine.dispose()


def test_one_statement_on_sqlite_is_an_ordinary_transaction(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'tlq.sqlite'}")
    with pytest.raises(RuntimeError), db.one_statement() as session:
        queries.insert_job(session, task="feature-extract", backbone="test_resnet", params={}, queue="cpu")
        raise RuntimeError("rolled back")
    with db.read_session() as session:
        assert session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0


def test_a_session_the_server_ended_a_moment_ago_is_replaced_before_use(pg_url):
    """No ping for a connection used within the second, yet a session the server ended (a failover,
    ``pg_terminate_backend``) is not handed out: the server said so on its socket."""
    db = Database(pg_url)
    with db.session() as first, db.session() as second:  # two pooled connections, both used just now
        first.execute(select(1))
        second.execute(select(1))
    assert _terminate_other_backends(pg_url) == 2
    for _ in range(3):  # both dead connections are replaced, not only the first one checked out
        with db.session() as session:
            assert session.execute(select(1)).scalar_one() == 1
    with db.session() as first, db.session() as second:
        assert first.execute(select(1)).scalar_one() == second.execute(select(1)).scalar_one() == 1
    db.engine.dispose()
