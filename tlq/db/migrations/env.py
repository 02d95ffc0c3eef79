"""Alembic environment: runs on the connection tlq hands over, or on TLQ_DATABASE_URL from the alembic CLI."""

from alembic import context
from sqlalchemy import pool

from tlq.db.models import Base

config = context.config
connection = config.attributes.get("connection")


def _run(conn) -> None:
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    from tlq.config import Settings
    from tlq.db.engine import create_db_engine

    engine = create_db_engine(config.get_main_option("sqlalchemy.url") or Settings.load().database_url)
    engine.pool = pool.NullPool(engine.pool._creator)
    with engine.connect() as conn:
        _run(conn)
