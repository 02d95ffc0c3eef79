"""The engine factory and schema management: SQLite in WAL mode with a busy timeout, or PostgreSQL.

Migrations are applied on first use, so a fresh ``TLQ_HOME`` or an empty PostgreSQL database just works;
`tlq db upgrade` applies them explicitly.
"""

from __future__ import annotations

import contextlib
import logging
import select
import time
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tlq.config import mask_secrets_in, mask_url, normalize_database_url
from tlq.errors import BadInput

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_PG_MIGRATION_LOCK = 7_274_201  # arbitrary key for pg_advisory_xact_lock, shared by every tlq process
SQLITE_BUSY_TIMEOUT_MS = 30_000
READ_ONLY_OPTION = "tlq_read_only"
PING_AFTER_IDLE_S = 1.0
_RETURNED_AT = "tlq_returned_at"


class DatabaseUnavailable(RuntimeError):
    """The database cannot be reached; the message names the URL (masked) and what to do."""


def create_db_engine(url: str) -> Engine:
    """Creates an engine for ``url`` with the settings tlq relies on.

    SQLite gets WAL mode, a busy timeout, foreign keys, and ``BEGIN IMMEDIATE`` transactions so that
    concurrent writers queue for the lock instead of failing with "database is locked".
    """
    url = normalize_database_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    connect_args = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
    engine = create_engine(url, pool_size=5, max_overflow=5, connect_args=connect_args)
    _ping_after_idle(engine)
    return engine


def _ping_after_idle(engine: Engine) -> None:
    """``pool_pre_ping`` without its round trip on every checkout (three per job a worker runs, three per job
    submitted): a connection is pinged when it sat in the pool longer than ``PING_AFTER_IDLE_S``, or when the
    server sent it something while it sat there. A server that ends a session (a restart, ``pg_terminate_backend``,
    a failover) says so on its socket and closes it, so a connection returned a moment ago is checked by looking,
    without a round trip, whether its socket became readable. A dead one replaces every connection pooled before it,
    as a failed ``pool_pre_ping`` does; a live one that only heard a notice (a setting reloaded) passes its ping."""

    @event.listens_for(engine, "connect")
    def _connected(_dbapi_connection, record) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection, record) -> None:
        if record is not None:
            record.info[_RETURNED_AT] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection, record, _proxy) -> None:
        idle = time.monotonic() - record.info.get(_RETURNED_AT, 0.0) > PING_AFTER_IDLE_S
        if not idle and not _heard_from_server(dbapi_connection):
            return
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise InvalidatePoolError(f"a pooled connection is dead: {_first_line(exc)}") from exc
        if alive is False:
            raise InvalidatePoolError("a pooled connection is dead")


def _heard_from_server(dbapi_connection) -> bool:
    """Whether the connection's socket has something to read (or cannot be asked) while no query is out."""
    try:
        poller = select.poll()
        poller.register(dbapi_connection.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError, AttributeError):  # closed, or a driver without a socket to look at
        return True


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (the SQLAlchemy docs' recipe).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        # Take the write lock up front: a deferred transaction that later writes can fail at once with
        # SQLITE_BUSY instead of waiting, which is the usual cause of "database is locked". Read-only sessions
        # begin deferred: in WAL mode they read a snapshot and never wait for a writer, so `tlq show` and a
        # running job's lease checks go on while another process holds the write lock.
        if connection.get_execution_options().get(READ_ONLY_OPTION):
            connection.exec_driver_sql("BEGIN")
        else:
            connection.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """An engine, its session factory, and the schema check that runs on first use.

    Args:
        url: SQLAlchemy URL; a driverless ``postgresql://`` URL is mapped to psycopg.
        migrate: Apply pending migrations on first use.
    """

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = normalize_database_url(url)
        self.engine = create_db_engine(self.url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY_OPTION: True}), expire_on_commit=False
        )
        self._autocommit_sessions = (
            sessionmaker(self.engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
            if self.engine.dialect.name == "postgresql"
            else None  # SQLite: one_statement is an ordinary session
        )
        self._migrate = migrate
        self._schema_ready = False
        self._instance_id: str | None = None

    @property
    def masked_url(self) -> str:
        return mask_url(self.url)

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        self.ensure_schema()
        with self._sessions() as session, session.begin():
            yield session

    @contextlib.contextmanager
    def read_session(self) -> Iterator[Session]:
        """A session for reading only: on SQLite it takes no write lock, so it never waits for a writer.

        Whatever it writes is rolled back.
        """
        self.ensure_schema()
        with self._read_sessions() as session:  # closing it rolls its transaction back, objects stay loaded
            yield session

    @contextlib.contextmanager
    def one_statement(self, read: bool = False) -> Iterator[Session]:
        """A session for work that is a single statement, which is atomic on its own: on PostgreSQL it runs in
        autocommit, one round trip where a transaction takes three (BEGIN, the statement, COMMIT); on SQLite, whose
        round trips cost nothing, it is ``read_session`` (``read``) or ``session``. Never for two statements:
        each would commit alone."""
        if self._autocommit_sessions is None:
            with self.read_session() if read else self.session() as session:
                yield session
            return
        self.ensure_schema()
        with self._autocommit_sessions() as session, session.begin():
            yield session

    def ensure_schema(self) -> None:
        """Brings the schema to the newest migration, once per process."""
        if self._schema_ready or not self._migrate:
            return
        try:
            upgrade(self.engine)
        except SchemaTooNew as exc:
            raise BadInput(
                f"the database at {self.masked_url} {exc}; upgrade tlq, or point TLQ_DATABASE_URL / --database-url "
                "at another database"
            ) from None
        except OperationalError as exc:
            raise DatabaseUnavailable(
                f"cannot reach the database at {self.masked_url} ({mask_secrets_in(_first_line(exc.orig or exc))}); "
                "start it, or point TLQ_DATABASE_URL / --database-url at one that runs"
            ) from exc
        self._schema_ready = True

    @property
    def instance_id(self) -> str:
        """The random id this database was created with (``tlq_instance``), read once per process."""
        if self._instance_id is None:
            from sqlalchemy import select

            from tlq.db.models import DatabaseInstance

            with self.read_session() as session:
                self._instance_id = session.scalar(select(DatabaseInstance.id))
        return self._instance_id

    def dispose(self) -> None:
        """Drops pooled connections; called in a forked worker child so no connection crosses a fork."""
        self.engine.dispose(close=False)


def _first_line(exc: BaseException) -> str:
    text_ = str(exc).strip().splitlines()
    return text_[0] if text_ else type(exc).__name__


def _alembic_config():
    from alembic.config import Config

    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    return cfg


def head_revision() -> str:
    """The newest migration shipped with this tlq."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


class SchemaTooNew(RuntimeError):
    """The database was migrated by a newer tlq: this one does not know its schema."""


def _known_revision(revision: str) -> bool:
    from alembic.script import ScriptDirectory

    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except Exception:  # alembic's ResolutionError and friends: not one of ours
        return False


def current_revision(engine: Engine) -> str | None:
    """The migration the database is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.execution_options(**{READ_ONLY_OPTION: True}).connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> bool:
    """Applies pending migrations under a lock; returns whether anything was applied."""
    from alembic import command

    head, current = head_revision(), current_revision(engine)
    if revision == "head" and current == head:
        return False
    if current is not None and not _known_revision(current):
        raise SchemaTooNew(f"has schema revision {current}, made by a newer tlq than this one (whose newest is {head})")
    cfg = _alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
        from alembic.runtime.migration import MigrationContext

        if revision == "head" and MigrationContext.configure(conn).get_current_revision() == head:
            return False  # another process got there first
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return True
