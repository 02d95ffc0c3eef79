"""The scans of running jobs that the recovery and the deadline checks make, timed by the database's clock."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from tlq.db.clock import db_now
from tlq.db.models import Job, JobStatus

RUNNING = JobStatus.RUNNING.value


@dataclass(frozen=True)
class HeldJob:
    """A running job as the recovery and deadline scans see it."""

    id: int
    lease: str | None
    worker: str | None
    process_id: int | None
    timeout_s: float | None
    seconds_running: float
    seconds_since_progress: float
    seconds_since_heartbeat: float
    seconds_since_cancel: float | None = None


def running_jobs(session: Session, worker: str | None = None, stale_after_s: float | None = None) -> list[HeldJob]:
    """Running jobs (of ``worker``; with a heartbeat older than ``stale_after_s``), timed by the database."""
    now = db_now()
    query = select(
        Job.id,
        Job.lease,
        Job.worker,
        Job.process_id,
        Job.timeout_s,
        Job.claimed_at,
        Job.progress_at,
        Job.heartbeat_at,
        Job.cancel_requested_at,
        now.label("now"),
    ).where(Job.status == RUNNING)
    if worker is not None:
        query = query.where(Job.worker == worker)
    if stale_after_s is not None:
        query = query.where(or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < db_now(-stale_after_s)))
    held = []
    for row in session.execute(query):

        def since(moment, now=row.now) -> float:
            return (now - moment).total_seconds() if moment is not None else float("inf")

        held.append(
            HeldJob(
                row.id,
                row.lease,
                row.worker,
                row.process_id,
                row.timeout_s,
                since(row.claimed_at),
                since(row.progress_at or row.claimed_at),
                since(row.heartbeat_at),
                since(row.cancel_requested_at) if row.cancel_requested_at is not None else None,
            )
        )
    return held
