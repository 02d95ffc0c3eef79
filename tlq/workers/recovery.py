"""Ending a worker's jobs without an outcome of their own, and the process checks that need.

Every such ending goes through ``claims.recover`` (one decision: cancel, fail or requeue), or, for a job stuck
inside one step, ``claims.end_overdue``; ``tlq.workers.lifecycle`` says when each runs:

- a job whose heartbeat stopped is recovered by any live worker within ``TLQ_STALE_AFTER`` seconds, but only
  by a worker that could reach the database quickly for that whole window itself (``DatabaseHealth``);
- a job whose pool process died under it is recovered at once, with the reason (``record_lost_process``);
- a worker told to stop hands its running jobs back without spending an attempt (``release_running_jobs``);
- a job that overran its ``--timeout``, did not stop after a cancel, or made no progress for
  ``TLQ_STALL_AFTER`` is failed, and its pool process ended (``end_overdue_jobs``);
- a job whose message was revoked from Celery's tools is cancelled, as by `tlq cancel` (``cancel_revoked_job``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Iterator

from celery import Celery

from tlq.db import JobStatus, claims, queries
from tlq.db.models import Job
from tlq.db.scans import HeldJob, running_jobs
from tlq.db.sends import hand_back_message
from tlq.env import Environment
from tlq.workers.execute import heartbeat_interval
from tlq.workers.sending import send_held

log = logging.getLogger("tlq.worker")

TIMEOUT_GRACE_S = 2.0  # the task's own check gets this long to stop a job that ran past --timeout
CANCEL_GRACE_S = 10.0  # a cancelled job that has not stopped by itself within this long is ended by force
LOCK_WAIT_S = 1.0  # a recovery that waited this long for the write lock may have raced a blocked heartbeat


class Slow(RuntimeError):
    """A transaction waited for the database's write lock; what it read may be stale, so it is rolled back."""


class DatabaseHealth:
    """How long this process has had working access to the database.

    A checker may call a heartbeat silent only after it has itself been able to hear one for a whole stale
    window: if the database was away or locked for everyone, no heartbeat could be written either. The
    window starts at the end of the first success after a failure, not at the failure: a lock can outlast
    the call that gave up on it, and a call that waited for a lock ends when the lock was freed for all.
    Slowness alone (a loaded machine) is no outage: it must not stop recovery.
    """

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.since: float | None = None

    @contextlib.contextmanager
    def timed(self) -> Iterator[None]:
        try:
            yield
        except Exception:
            self.since = None
            raise
        if self.since is None:
            self.since = self.clock()

    def distrust(self) -> None:
        self.since = None

    def trusted_for(self) -> float:
        return 0.0 if self.since is None else self.clock() - self.since


def process_state(pid: int) -> str | None:
    """The process's state letter (R, S, T, Z, ...) from /proc, or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    if os.path.isdir("/proc"):
        return process_state(pid) not in (None, "Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_child(pid: int) -> bool:
    """Whether ``pid`` is a pool process of this (main) worker process."""
    if pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return int(handle.read().rsplit(")", 1)[1].split()[1]) == os.getpid()
    except (OSError, IndexError, ValueError):
        return not os.path.isdir("/proc")  # no /proc to ask: trust the pid our own child recorded


# --- recovery ---------------------------------------------------------------------------------------------------


def recover_stale_jobs(env: Environment, app: Celery, health: DatabaseHealth | None = None) -> list[int]:
    """Recovers running jobs whose heartbeat is older than ``TLQ_STALE_AFTER``; returns the requeued ids."""
    stale_after = env.settings.stale_after_s
    with env.db.read_session() as session:
        stale = running_jobs(session, stale_after_s=stale_after)
    to_send = []
    for job in stale:
        reason = f"no heartbeat for {job.seconds_since_heartbeat:.0f} s from worker {job.worker}"
        try:
            with env.db.session() as session:
                start = time.monotonic()
                session.connection()  # begins the transaction: on SQLite, takes the write lock
                if time.monotonic() - start > LOCK_WAIT_S:
                    # The holder's heartbeat may have waited on the same lock: look again next time.
                    raise Slow(f"the recovery of job {job.id} waited for the database's write lock; not trusted")
                outcome = claims.recover(session, job.id, job.lease, reason, stale_after_s=stale_after)
        except Slow as exc:
            if health is not None:
                health.distrust()
            log.warning("%s", exc)
            break  # what was already requeued is still sent
        _log_outcome(job.id, outcome, reason)
        if outcome == "requeued":
            to_send.append(job.id)
    return _send_requeued(env, app, to_send)


def _send_requeued(env: Environment, app: Celery, job_ids: list[int]) -> list[int]:
    if not job_ids:
        return []
    with env.db.read_session() as session:
        rows = session.query(Job.id, Job.queue, Job.priority).filter(Job.id.in_(job_ids)).all()
    send_held(env, app, [(r.id, r.queue, r.priority) for r in rows])
    return job_ids


def _log_outcome(job_id: int, outcome: str | None, reason: str) -> None:
    if outcome == "failed":
        log.warning("job %s failed: %s, and it has no attempts left", job_id, reason)
    elif outcome:
        log.warning("job %s %s: %s", job_id, outcome, reason)


def record_lost_process(env: Environment, app: Celery, name: str, job_id: int, reason: str) -> None:
    """A pool process of this worker died while running ``job_id``: recover the job at once."""
    with env.db.read_session() as session:
        job = queries.get_job(session, job_id)
    if job is None:
        return
    if job.status == JobStatus.QUEUED.value:
        # The process died before it claimed the job: its message is spent; send the job again.
        with env.db.session() as session:
            hand_back_message(session, job_id)
        return
    if job.status != JobStatus.RUNNING.value or job.worker != name:
        return
    if job.process_id and process_alive(job.process_id):
        return  # a live sibling holds the job now
    with env.db.session() as session:
        outcome = claims.recover(session, job_id, job.lease, reason)
    _log_outcome(job_id, outcome, reason)
    if outcome == "requeued":
        _send_requeued(env, app, [job_id])


def cancel_revoked_job(env: Environment, job_id: int, terminated: bool) -> str:
    """A revoke from Celery's tools (Flower's Revoke and Terminate, `celery control revoke`) becomes the cancel
    `tlq cancel` makes (``claims.request_cancel``), and returns its outcome.

    Celery only drops a revoked message, or with terminate kills the process running it; the job's row would
    still say queued, with its message spent and nothing to send it again, or running, to be requeued when its
    heartbeat stops. As a cancel, a queued job ends cancelled, and a running one whose process was killed is
    ended cancelled within ``CANCEL_GRACE_S``.
    """
    with env.db.session() as session:
        outcome = claims.request_cancel(session, job_id)
    log.warning("job %s was %s from Celery: %s", job_id, "terminated" if terminated else "revoked", outcome)
    return outcome


def overdue_reason(job: HeldJob, stall_after_s: float, beat_every: float, check_stall: bool) -> str | None:
    """Why a running job must be ended by force, or None: it overran ``--timeout`` by the grace, did not stop
    within ``CANCEL_GRACE_S`` of a cancel, or (with ``check_stall``) took no step for ``stall_after_s`` while
    its heartbeat still beat."""
    if job.seconds_since_cancel is not None and job.seconds_since_cancel > CANCEL_GRACE_S:
        return f"did not stop within {CANCEL_GRACE_S:g} s of its cancel; the worker ended its process"
    if job.timeout_s is not None and job.seconds_running > job.timeout_s + TIMEOUT_GRACE_S:
        return (
            f"ran past its timeout of {job.timeout_s:g} s, stuck inside one step; the worker ended its process "
            "(raise --timeout if it needs longer)"
        )
    beating = job.seconds_since_heartbeat < 3 * beat_every  # a frozen or cut-off attempt is the stale scan's
    if check_stall and beating and job.seconds_since_progress > stall_after_s:
        return (
            f"made no progress for {job.seconds_since_progress:.0f} s (TLQ_STALL_AFTER={stall_after_s:g}) while "
            "its heartbeat still beat; the worker ended it"
        )
    return None


def end_overdue_jobs(env: Environment, name: str, check_stall: bool = True) -> list[int]:
    """Ends this worker's jobs that are stuck (see ``overdue_reason``) and kills the pool processes running
    them; returns the ids. ``check_stall`` is off while this process's own view of the database is stale."""
    beat_every = heartbeat_interval(env.settings.stale_after_s)
    with env.db.read_session() as session:
        running = running_jobs(session, worker=name)
    ended = []
    for job in running:
        reason = job.lease and overdue_reason(job, env.settings.stall_after_s, beat_every, check_stall)
        if not reason:
            continue
        with env.db.session() as session:
            status = claims.end_overdue(session, job.id, job.lease, reason)
        if status is None:
            continue
        ended.append(job.id)
        log.warning("job %s %s: %s", job.id, status, reason)
        _kill_stuck_process(env, name, job)
    return ended


def _kill_stuck_process(env: Environment, name: str, job: HeldJob) -> None:
    if job.process_id and not process_alive(job.process_id):
        return  # already gone (a terminate from Celery's tools killed it): nothing to end
    if not job.process_id or not is_child(job.process_id):
        log.error(
            "job %s is stuck in process %s, which this worker cannot end (the solo or threads pool); restart "
            "the worker",
            job.id,
            job.process_id,
        )
        return
    with env.db.read_session() as session:
        if any(other.process_id == job.process_id for other in running_jobs(session, worker=name)):
            return  # it was not stuck after all: it has moved on to another job
    with contextlib.suppress(ProcessLookupError):
        os.kill(job.process_id, signal.SIGKILL)


def release_running_jobs(env: Environment, app: Celery, name: str, instance: str | None = None) -> list[int]:
    """Marks this worker as stopping (it claims nothing more) and hands its running jobs back without
    spending an attempt; they stop at their next step and run again elsewhere."""
    with env.db.session() as session:
        if not queries.touch_worker(session, name, instance, status="stopping"):
            return []  # another worker holds this name now; its jobs are not ours to hand back
    return _recover_jobs_of(env, app, name, f"released by stopping worker {name}", spend_attempt=False)


def requeue_own_jobs(env: Environment, app: Celery, name: str) -> list[int]:
    """A worker restarting under the same name recovers the jobs its earlier life left running."""
    return _recover_jobs_of(env, app, name, f"its worker {name} restarted")


def _recover_jobs_of(env: Environment, app: Celery, name: str, reason: str, spend_attempt: bool = True) -> list[int]:
    with env.db.read_session() as session:
        running = running_jobs(session, worker=name)
    requeued = []
    for job in running:
        with env.db.session() as session:
            outcome = claims.recover(session, job.id, job.lease, reason, spend_attempt=spend_attempt)
        _log_outcome(job.id, outcome, reason)
        if outcome == "requeued":
            requeued.append(job.id)
    return _send_requeued(env, app, requeued)
