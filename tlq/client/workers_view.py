"""The workers as `tlq workers` shows them: plain dicts, each saying whether the worker is live."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any


def worker_rows(env, show_all: bool = False) -> list[dict[str, Any]]:
    """The workers, by name; with ``show_all``, the offline ones too (see ``Client.workers``)."""
    from tlq.db import queries
    from tlq.db.clock import database_time

    with env.db.read_session() as session:
        now = database_time(session)  # the clock the workers report by, not this machine's
        rows = queries.list_workers(session)
        jobs = queries.running_jobs_of(session, [w.name for w in rows])
    data = []
    for w in rows:
        live = w.status == "online" and (now - w.last_seen).total_seconds() <= queries.WORKER_LIVE_WINDOW_S
        if not (live or show_all):
            continue
        data.append(
            {
                "name": w.name,
                "hostname": w.hostname,
                "pid": w.pid,
                "queues": w.queues.split(","),
                "device": w.device,
                "concurrency": w.concurrency,
                "gpus": json.loads(w.gpus) if w.gpus else [],
                "status": "online" if live else "offline",
                "current_job": jobs.get(w.name, [None])[0],  # the one claimed first; all in current_jobs
                "current_jobs": jobs.get(w.name, []),
                "started_at": w.started_at.isoformat(),
                "last_seen": w.last_seen.isoformat(),
                "seconds_since_seen": round((now - w.last_seen) / dt.timedelta(seconds=1), 1),
            }
        )
    return data
