"""A queued job's message: who sends it, and when it counts as sent.

A job that must be (re)sent is left ``queued`` with ``dispatched_at`` empty and a send hold
(``sending_since``) for the process that will publish it; ``dispatched_at`` is set only once the publish
returned. A hold that is not confirmed expires, and the job is sent again by the next live worker.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tlq.config import mask_secrets_in
from tlq.db.clock import db_now
from tlq.db.models import Job, JobStatus

SEND_HOLD_S = 30.0  # a sender that has not confirmed within this long is presumed dead

QUEUED = JobStatus.QUEUED.value


def _unsent(broker_started=None):
    lost = Job.dispatched_at.is_(None)
    if broker_started is not None:
        lost = lost | (Job.dispatched_at < broker_started)
    free = Job.sending_since.is_(None) | (Job.sending_since < db_now(-SEND_HOLD_S))
    return (Job.status == QUEUED, Job.queue != "local", lost, free)


def claim_sends(session: Session, broker_started=None) -> list[tuple[int, str, int]]:
    """Takes the send hold of every queued job with no confirmed message: never sent, requeued, handed back by
    a stopping worker, sent before the broker last (re)started (``broker_started``, the database's time), or
    held by a sender that never confirmed.

    Each hold is a conditional update, so of several workers noticing a job only one sends it. Returns (id,
    queue, priority) of the jobs this caller must now publish and confirm (``confirm_sent``) or release
    (``release_send``).
    """
    candidates = list(session.execute(select(Job.id, Job.queue, Job.priority).where(*_unsent(broker_started))))
    held = []
    for job_id, queue, priority in candidates:
        result = session.execute(
            update(Job).where(Job.id == job_id, *_unsent(broker_started)).values(sending_since=db_now())
        )
        if result.rowcount == 1:
            held.append((job_id, queue, priority))
    return held


def confirm_sent(session: Session, job_id: int) -> None:
    """The job's message is in the broker."""
    jobs = Job.__table__  # a Core statement: it runs once per job submitted
    session.execute(update(jobs).where(jobs.c.id == job_id).values(dispatched_at=db_now(), sending_since=None))


def release_send(session: Session, job_id: int) -> None:
    """The publish failed: the next live worker sends the job again."""
    session.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED).values(sending_since=None))


def hand_back_message(session: Session, job_id: int) -> None:
    """A stopping worker got the job's message but will not run it: the job has no message any more."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == QUEUED).values(dispatched_at=None, sending_since=None)
    )


def fail_queued(session: Session, job_id: int, error: str) -> None:
    """Marks a job that never started as failed, recording why (a broker that refused it, say)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED)
        .values(status=JobStatus.FAILED.value, error=mask_secrets_in(error), finished_at=db_now(), sending_since=None)
    )
