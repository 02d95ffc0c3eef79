"""The schema on SQLite and PostgreSQL: migrations, SQLite settings, metrics that replace rather than double."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import select, text

from tests.db.conftest import new_job
from tlq.db import Database, Metric, queries
from tlq.db.engine import current_revision, head_revision
from tlq.db.models import Base


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


def test_read_sessions_on_sqlite_do_not_wait_for_a_writer(tmp_path):
    import sqlite3

    db = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
    job_id = new_job(db)
    holder = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock (a backup, a stuck writer)
    try:
        # A new process (`tlq show`) checks the schema too. Had either needed the lock, they would have raised
        # "database is locked" after the busy timeout, while the lock is still held.
        fresh = Database(f"sqlite:///{tmp_path / 'x.sqlite'}")
        with fresh.read_session() as session:
            assert queries.get_job(session, job_id).status == "queued"
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_no_migration_takes_away_what_workers_of_the_release_before_still_use():
    """Migrations run on first use, so one new `tlq` command upgrades a database that older workers still run
    on: an upgrade may add, never drop or rename (drop a column a release after the code stops using it)."""
    import inspect

    from alembic.script import ScriptDirectory

    from tlq.db.engine import _alembic_config as alembic_config

    removals = ("drop_column", "drop_table", "alter_column", "rename_table")
    for revision in ScriptDirectory.from_config(alembic_config()).walk_revisions():
        upgrade = inspect.getsource(revision.module.upgrade)
        assert not [word for word in removals if word in upgrade], f"migration {revision.revision} removes something"


def test_a_database_a_newer_tlq_migrated_is_refused_in_one_line_and_left_alone(tmp_path):
    import sqlalchemy as sa

    from tests.support import run_tlq, tlq_env
    from tlq.db.engine import Database

    url = f"sqlite:///{tmp_path / 'tlq.sqlite'}"
    Database(url).ensure_schema()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # as a tlq with a migration this one lacks leaves it
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '0099'"))
    out = run_tlq(["jobs"], tlq_env(tmp_path), check=False)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    (line,) = out.stderr.strip().splitlines()
    assert "schema revision 0099, made by a newer tlq" in line and "upgrade tlq" in line
    with engine.connect() as conn:  # nothing was changed
        assert conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar() == "0099"
