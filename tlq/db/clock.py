"""One clock for every process: the database's.

Heartbeats are written by one host and judged by another; if each used its own clock, a checker whose clock
runs ahead would see healthy jobs as silent (it did: a checker 90 s ahead requeued them until they ran out of
attempts). So every time that a liveness decision reads or writes (heartbeats, claims, worker reports, sends)
is the database's own ``now``: PostgreSQL's ``now()``, or on SQLite the clock of the one host that holds the
file, asked through SQLite itself rather than through Python.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.functions import FunctionElement
from sqlalchemy.sql.visitors import InternalTraversal

from tlq.db.models import UTCDateTime


class db_now(FunctionElement):  # noqa: N801 - reads as the SQL function it renders
    """The database's current time, optionally shifted by ``offset_s`` seconds, as a SQL expression.

    Use it in values (``heartbeat_at=db_now()``) and in conditions (``heartbeat_at < db_now(-60)``).
    """

    type = UTCDateTime()
    # Cacheable, with the offset in the cache key: every statement that asks the time (claims, heartbeats,
    # reports) is compiled once per shape, not on every call.
    inherit_cache = True
    _traverse_internals = [*FunctionElement._traverse_internals, ("offset_s", InternalTraversal.dp_plain_obj)]

    def __init__(self, offset_s: float = 0.0) -> None:
        self.offset_s = float(offset_s)
        super().__init__()


@compiles(db_now, "postgresql")
def _pg_now(element: db_now, compiler, **kw) -> str:
    if not element.offset_s:
        return "now()"
    return f"(now() + make_interval(secs => {element.offset_s!r}))"


@compiles(db_now)
def _sqlite_now(element: db_now, compiler, **kw) -> str:
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff'; %f gives milliseconds, so three
    # zeros pad it to the same width and text comparisons order correctly.
    modifier = f", '{element.offset_s:+.3f} seconds'" if element.offset_s else ""
    return f"(strftime('%Y-%m-%d %H:%M:%f', 'now'{modifier}) || '000')"


def database_time(session: Session) -> dt.datetime:
    """The database's current time, timezone-aware in UTC."""
    return session.scalar(select(db_now()))
