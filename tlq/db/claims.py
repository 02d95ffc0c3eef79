"""A job's row through its life: claimed under a lease, held, finished, recovered, cancelled and sent.

Three rules make "every job ends exactly once" hold against crashes, frozen processes and races:

- **A lease per claim.** Each claim writes a fresh random token to the row (and an ``job_attempts`` row).
  Every later write of that attempt (heartbeat, progress, metrics, artifacts, the final status) is
  conditional on the token, so a process whose job was recovered elsewhere writes nothing more, even when
  it shares its worker's name with the new holder.
- **One clock.** Every time compared here is the database's (``db_now``), never a process's own.
- **Every state change is one conditional UPDATE** whose row count says who won; every recovery decision
  (cancel, fail or requeue) is taken by ``decide_recovery`` alone.

A job that must be (re)sent is left ``queued`` with a send hold; the sends themselves are in ``tlq.db.sends``,
and the scans of running jobs in ``tlq.db.scans``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from tlq.config import mask_secrets_in
from tlq.db import lease_statements as ls
from tlq.db.clock import db_now
from tlq.db.models import Job, JobStatus
from tlq.db.scans import HeldJob, running_jobs  # noqa: F401 (the scans and sends, once here, are claims.NAME too)
from tlq.db.sends import (  # noqa: F401
    SEND_HOLD_S,
    claim_sends,
    confirm_sent,
    fail_queued,
    hand_back_message,
    release_send,
)

CANCELLED_ON_REQUEST = "cancelled on request"

# The statements a running job makes are on the tables (SQLAlchemy Core): half the CPU of the ORM's path per job.
JOBS, ATTEMPTS, RUNNING, QUEUED = ls.JOBS, ls.ATTEMPTS, ls.RUNNING, ls.QUEUED


@dataclass(frozen=True)
class LeaseState:
    """What a running attempt learns when it looks at its job's row."""

    ours: bool
    cancel_requested: bool


# --- the decision -----------------------------------------------------------------------------------------------


def decide_recovery(
    cancel_requested: bool, attempts: int, max_attempts: int, spend_attempt: bool = True, requeueable: bool = True
) -> str:
    """What becomes of a running job whose attempt ended without an outcome (its process died, its heartbeat
    stopped, its worker is shutting down): ``cancelled`` if a cancel was asked for, ``failed`` once its
    attempts are spent or when no worker could take it (``requeueable=False``: it ran in `tlq run` or ``track``), else
    ``requeued``. An attempt that is handed back (``spend_attempt=False``) never spends the last attempt."""
    if cancel_requested:
        return "cancelled"
    if not requeueable or (spend_attempt and attempts >= max_attempts):
        return "failed"
    return "requeued"


# --- claiming and holding ---------------------------------------------------------------------------------------


def new_lease() -> str:
    return secrets.token_hex(16)


@dataclass(frozen=True)
class Claim:
    """A claim that won: its lease, the job's row as the claim left it, and how many claims came before."""

    lease: str
    job: Job
    earlier_claims: int


def claim(
    session: Session, job_id: int, worker: str, hostname: str = "", pid: int = 0, lease: str | None = None
) -> str | None:
    """Moves a queued job to running under a new lease for ``worker`` (``claim_job``, for its lease alone).

    Returns:
        The lease, or None when another delivery, a cancel or a worker got the job first, or ``worker`` is
        shutting down. A queued job whose cancel was asked for is ended ``cancelled`` here.
    """
    won = claim_job(session, job_id, worker, hostname, pid, lease)
    return won.lease if won is not None else None


def claim_job(
    session: Session,
    job_id: int,
    worker: str,
    hostname: str = "",
    pid: int = 0,
    lease: str | None = None,
    ran_on: dict[str, str] | None = None,
) -> Claim | None:
    """Moves a queued job to running under a new lease for ``worker``, in one UPDATE that also returns the row,
    and records the claim as an attempt, in an INSERT that returns the number of earlier claims.

    Args:
        lease: The token to claim under; a retried claim passes the same one, so that a claim whose commit
            reply was lost is recognized as its own.
        ran_on: What this worker runs a job on, by the device the job asks for (``cpu``, ``auto``, ``cuda``);
            the job's ``ran_on`` is set from it in the same statement (a device not in it leaves it as it was).

    Returns:
        The claim, or None when another delivery, a cancel or a worker got the job first, or ``worker`` is
        shutting down. A queued job whose cancel was asked for is ended ``cancelled`` here.
    """
    lease = lease or new_lease()
    labels = dict(ran_on or {})
    params = dict(p_job_id=job_id, p_worker=worker, p_lease=lease, p_pid=pid or None)
    params.update({f"p_ran_on_{i}": label for i, label in enumerate(labels.values())})
    row = session.connection().execute(ls.claim_statement(tuple(labels)), params).first()
    if row is None:
        job = session.scalar(select(Job).where(Job.id == job_id).execution_options(populate_existing=True))
        if job is not None and job.status == RUNNING and job.lease == lease:
            # an earlier try of this very claim was committed; its reply was lost
            return Claim(lease, job, session.scalar(ls.earlier_claims(job_id, lease)))
        _end_cancelled_queued(session, job_id)
        return None
    job = Job(**row._mapping)  # the row as the claim left it
    loaded = session.identity_map.get(identity_key(Job, job_id))
    if loaded is not None:  # a copy this session read before the claim: read again when next used
        session.expire(loaded)
    # Counted by the INSERT, a statement of its own: on PostgreSQL an UPDATE that waited for the row's lock keeps
    # its older snapshot, which misses the attempt of a claim made (and requeued) meanwhile.
    before = session.connection().execute(
        ls.ATTEMPT_INSERT,
        dict(p_job_id=job_id, p_number=job.attempts, p_lease=lease, p_worker=worker, p_hostname=hostname, p_pid=pid),
    )
    return Claim(lease, job, before.scalar_one())


def _end_cancelled_queued(session: Session, job_id: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == QUEUED, Job.cancel_requested.is_(True))
        .values(status=JobStatus.CANCELLED.value, finished_at=db_now(), error=CANCELLED_ON_REQUEST)
    )


def _held(job_id: int, lease: str):
    return (JOBS.c.id == job_id, JOBS.c.lease == lease, JOBS.c.status == RUNNING)


def hold(session: Session, job_id: int, lease: str, progressed: bool = False) -> bool:
    """Re-asserts ``lease`` and refreshes the heartbeat (and the progress time, when the task moved).

    In a write transaction this also locks the row until commit, so what the transaction writes next cannot
    race a recovery. Returns False when the lease is no longer the job's.
    """
    return hold_state(session, job_id, lease, progressed) is not None


def hold_state(
    session: Session, job_id: int, lease: str, progressed: bool = False, progress: tuple | None = None
) -> LeaseState | None:
    """``hold`` that also records ``progress`` (current, total, stage) and says, in the same statement, whether
    a cancel was asked for; None when the lease is no longer the job's."""
    params = dict(p_job_id=job_id, p_lease=lease, **ls.progress_params(progress))
    row = session.connection().execute(ls.hold_statement(progressed, progress is not None), params).first()
    return None if row is None else LeaseState(True, bool(row.cancel_requested))


def lease_state(session: Session, job_id: int, lease: str) -> LeaseState:
    """Whether ``lease`` still holds the job and whether a cancel was asked for; a read, no lock taken."""
    c = JOBS.c
    row = session.execute(select(c.lease, c.status, c.cancel_requested).where(c.id == job_id)).first()
    if row is None:
        return LeaseState(False, False)
    return LeaseState(row.lease == lease and row.status == RUNNING, bool(row.cancel_requested))


# --- ending -----------------------------------------------------------------------------------------------------


def finish(
    session: Session,
    job_id: int,
    lease: str,
    status: JobStatus,
    error: str | None = None,
    progress: tuple | None = None,
) -> bool:
    """``finish_attempt``, for yes or no: True when recorded, now or by an earlier try whose reply was lost."""
    return finish_attempt(session, job_id, lease, status, error, progress) is not None


def finish_attempt(
    session: Session,
    job_id: int,
    lease: str,
    status: JobStatus,
    error: str | None = None,
    progress: tuple | None = None,
) -> str | None:
    """Records the final status of the attempt holding ``lease`` (and its last ``progress``: current, total,
    stage). In a write transaction the row stays locked until commit, so what the transaction writes next (the
    attempt's last metrics and artifacts) cannot race a recovery.

    Returns:
        "recorded" when recorded now; "already" when an earlier try of the same write was committed (its reply
        was lost: what went with it is written already, and the row is no longer held); None when the lease is
        no longer the job's.
    """
    error = error and mask_secrets_in(error)  # a task's exception text may carry a URL with its password
    params = dict(p_job_id=job_id, p_lease=lease, p_status=status.value, p_error=error, **ls.progress_params(progress))
    result = session.connection().execute(ls.finish_statement(progress is not None), params)
    if result.rowcount != 1:
        row = session.execute(select(JOBS.c.lease, JOBS.c.status).where(JOBS.c.id == job_id)).first()
        return "already" if row is not None and row.lease == lease and row.status == status.value else None
    _end_attempt(session, lease, status.value, error)
    return "recorded"


def recover(
    session: Session,
    job_id: int,
    lease: str | None,
    reason: str,
    spend_attempt: bool = True,
    stale_after_s: float | None = None,
) -> str | None:
    """Ends the attempt holding ``lease`` without an outcome of its own, as ``decide_recovery`` says.

    Args:
        reason: Why the attempt ended (recorded on the job and the attempt, and in a failed job's error).
        spend_attempt: False when the attempt is handed back (a warm shutdown): it does not count.
        stale_after_s: Only if the heartbeat is at least this old, by the database's clock.

    Returns:
        "requeued" (the caller must send it; see ``send_hold``), "failed", "cancelled", or None when the
        lease was no longer the job's.
    """
    reason = mask_secrets_in(reason)
    conditions = [Job.id == job_id, Job.status == RUNNING, Job.lease.is_(None) if lease is None else Job.lease == lease]
    if stale_after_s is not None:
        conditions.append(Job.heartbeat_at < db_now(-stale_after_s))
    for _ in range(3):  # a cancel landing between the read and the update changes the decision: decide again
        row = session.execute(
            select(Job.cancel_requested, Job.attempts, Job.max_attempts, Job.queue).where(*conditions)
        ).first()
        if row is None:
            return None
        outcome = decide_recovery(
            row.cancel_requested, row.attempts, row.max_attempts, spend_attempt, requeueable=row.queue != "local"
        )
        decided_on = Job.cancel_requested.is_(True) if row.cancel_requested else Job.cancel_requested.is_(False)
        if (
            session.execute(
                update(Job)
                .where(*conditions, decided_on)
                .values(**_recovery_values(outcome, row, reason, spend_attempt))
            ).rowcount
            == 1
        ):
            break
    else:
        return None
    if lease is not None:
        _end_attempt(session, lease, "released" if not spend_attempt and outcome == "requeued" else outcome, reason)
    return outcome


def _recovery_values(outcome: str, row, reason: str, spend_attempt: bool) -> dict:
    if outcome == "cancelled":
        return dict(status=JobStatus.CANCELLED.value, finished_at=db_now(), error=CANCELLED_ON_REQUEST)
    if outcome == "failed" and row.queue == "local":
        return dict(
            status=JobStatus.FAILED.value,
            finished_at=db_now(),
            error=f"{reason}; it ran in `tlq run` or `tlq.client.track`, which no worker can resume: run it again",
        )
    if outcome == "failed":
        return dict(
            status=JobStatus.FAILED.value,
            finished_at=db_now(),
            error=f"{reason} on attempt {row.attempts} of {row.max_attempts}; giving up "
            "(raise --max-attempts to allow more)",
        )
    return dict(
        status=QUEUED,
        worker=None,
        lease=None,
        process_id=None,
        dispatched_at=None,
        sending_since=db_now(),
        progress_stage=(reason if not spend_attempt else f"requeued: {reason} on attempt {row.attempts}")[:255],
        attempts=row.attempts if spend_attempt else case((Job.attempts > 0, Job.attempts - 1), else_=0),
    )


def end_overdue(session: Session, job_id: int, lease: str, reason: str) -> str | None:
    """Ends a running job whose process is stuck (it overran its timeout, stopped moving, or did not stop
    after a cancel); its process is killed next. A cancel asked for wins: the job ends ``cancelled``.

    Returns:
        The status recorded, or None when the lease was no longer the job's.
    """
    cancel = session.scalar(select(JOBS.c.cancel_requested).where(*_held(job_id, lease)))
    if cancel is None:
        return None
    status, error = (JobStatus.CANCELLED, CANCELLED_ON_REQUEST) if cancel else (JobStatus.FAILED, reason)
    return status.value if finish(session, job_id, lease, status, error) else None


def _end_attempt(session: Session, lease: str, outcome: str, reason: str | None) -> None:
    reason = reason and mask_secrets_in(reason)[:4000]
    session.connection().execute(ls.END_ATTEMPT, dict(p_lease=lease, p_outcome=outcome, p_reason=reason))


def request_cancel(session: Session, job_id: int) -> str:
    """Cancels a queued job at once, or asks a running one to stop at its next step, in one statement: a job
    that is released or requeued at the same moment is still cancelled (the recovery sees the flag).

    Returns:
        "cancelled", "requested", or the job's final status when it had already ended ("missing" if none).
    """
    before = session.scalar(select(Job.status).where(Job.id == job_id))
    if before is None:
        return "missing"
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_((QUEUED, RUNNING)))
        .values(
            cancel_requested=True,
            cancel_requested_at=func.coalesce(Job.cancel_requested_at, db_now()),
            status=case((Job.status == QUEUED, JobStatus.CANCELLED.value), else_=Job.status),
            finished_at=case((Job.status == QUEUED, db_now()), else_=Job.finished_at),
            error=case((Job.status == QUEUED, CANCELLED_ON_REQUEST), else_=Job.error),
        )
    )
    after = session.scalar(select(Job.status).where(Job.id == job_id))
    if result.rowcount != 1:
        return after
    return "cancelled" if after == JobStatus.CANCELLED.value else "requested"
