"""A worker's life around the Celery consumer: registering itself, reporting in, recovering jobs.

The database, not the broker, knows which jobs run where, so recovery does not lean on the broker. Every
ending without an outcome goes through ``claims.recover`` (one decision: cancel, fail or requeue):

- a job whose heartbeat stopped (its worker was killed, its machine froze) is recovered by any live worker
  within ``TLQ_STALE_AFTER`` seconds, but only by a worker that could reach the database quickly for that
  whole window itself, so a database outage that silenced every heartbeat requeues nothing;
- a job whose pool process died under it is recovered at once, with the reason;
- a worker told to stop (SIGTERM) hands its running jobs back without spending an attempt;
- a job that overran its ``--timeout``, or made no progress for ``TLQ_STALL_AFTER``, while stuck inside one
  step, is failed by the worker's main process, which then ends the pool process running it;
- queued jobs with no confirmed message are sent again (``tlq.workers.sending``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Iterator

from celery import Celery
from celery.signals import task_failure, worker_ready, worker_shutdown, worker_shutting_down

from tlq.db import JobStatus, claims, queries
from tlq.db.models import Job, WorkerRecord
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.workers.execute import heartbeat_interval
from tlq.workers.keeper import is_transient
from tlq.workers.sending import send_held, send_unsent

log = logging.getLogger("tlq.worker")

REPORT_INTERVAL_S = 5.0
DEADLINE_TICK_S = 1.0
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
        stale = claims.running_jobs(session, stale_after_s=stale_after)
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
            claims.hand_back_message(session, job_id)
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


def overdue_reason(job: claims.HeldJob, stall_after_s: float, beat_every: float, check_stall: bool) -> str | None:
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
        running = claims.running_jobs(session, worker=name)
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


def _kill_stuck_process(env: Environment, name: str, job: claims.HeldJob) -> None:
    if not job.process_id or not is_child(job.process_id):
        log.error(
            "job %s is stuck in process %s, which this worker cannot end (the solo or threads pool); restart "
            "the worker",
            job.id,
            job.process_id,
        )
        return
    with env.db.read_session() as session:
        if any(other.process_id == job.process_id for other in claims.running_jobs(session, worker=name)):
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
        running = claims.running_jobs(session, worker=name)
    requeued = []
    for job in running:
        with env.db.session() as session:
            outcome = claims.recover(session, job.id, job.lease, reason, spend_attempt=spend_attempt)
        _log_outcome(job.id, outcome, reason)
        if outcome == "requeued":
            requeued.append(job.id)
    return _send_requeued(env, app, requeued)


# --- the monitor ------------------------------------------------------------------------------------------------


def log_failure(what: str, exc: Exception) -> None:
    """One line for a database or broker that is away (it will be retried), a traceback for anything else."""
    from kombu.exceptions import OperationalError as BrokerAway
    from redis.exceptions import ConnectionError as RedisAway

    if is_transient(exc) or isinstance(exc, OSError | BrokerAway | RedisAway):
        log.warning("%s: %s; retrying", what, str(exc).strip().splitlines()[0] if str(exc).strip() else exc)
    else:
        log.warning("%s; retrying", what, exc_info=exc)


def describe_holder(record: WorkerRecord) -> str:
    return f"host {record.hostname}, pid {record.pid}"


class WorkerMonitor(threading.Thread):
    """Runs in the worker's main process: ends overdue jobs every second; every few seconds reports in,
    recovers stale jobs and sends unsent ones."""

    def __init__(
        self,
        env: Environment,
        app: Celery,
        name: str,
        queues: list[str],
        device: str,
        concurrency: int,
        memory_per_job: int | None = None,
    ):
        super().__init__(name="tlq-worker-monitor", daemon=True)
        self.env = env
        self.app = app
        self.worker_name = name
        self.instance = secrets.token_hex(8)
        self.queues = queues
        self.device = device
        self.concurrency = concurrency
        self.memory_per_job = memory_per_job
        self.stopped = threading.Event()
        self.health = DatabaseHealth()
        self.scanning = False
        self._last_tick: float | None = None

    def register(self) -> None:
        """Claims the worker's name; raises BadInput when a live worker already holds it."""
        hostname = socket.gethostname()

        def is_gone(record: WorkerRecord) -> bool:
            return record.hostname == hostname and record.pid != os.getpid() and not process_alive(record.pid)

        with self.health.timed(), self.env.db.session() as session:
            holder = queries.register_worker(
                session,
                name=self.worker_name,
                instance=self.instance,
                is_gone=is_gone,
                hostname=hostname,
                pid=os.getpid(),
                queues=",".join(self.queues),
                device=self.device,
                concurrency=self.concurrency,
                memory_bytes=self.memory_per_job,
            )
        if holder is not None:
            raise BadInput(
                f"a live worker is already named {self.worker_name!r} ({describe_holder(holder)}); "
                "give this one another --name, or leave --name out for a unique default"
            )
        log.info("worker %s registered: queues %s, device %s", self.worker_name, ",".join(self.queues), self.device)

    def on_ready(self) -> None:
        try:
            requeue_own_jobs(self.env, self.app, self.worker_name)
            send_unsent(self.env, self.app)
        except Exception as exc:  # the monitor's own reports retry both; it must start whatever happens here
            log_failure("could not recover this worker's earlier jobs or send unsent ones", exc)
        finally:
            self.start()

    @property
    def report_every(self) -> float:
        """Every 5 s, or twice per stale window when that is shorter."""
        return min(REPORT_INTERVAL_S, self.env.settings.stale_after_s / 2)

    def run(self) -> None:
        next_report = time.monotonic() + self.report_every
        tick = min(DEADLINE_TICK_S, self.report_every)
        while not self.stopped.wait(tick):
            now = time.monotonic()
            if self._last_tick is not None and now - self._last_tick > tick + 5.0:
                self.health.distrust()  # this process was frozen or starved: what it last saw is old
            self._last_tick = now
            try:
                # A stall is judged only on a view of the database this process trusts: right after an outage
                # the lease keepers have not yet written the progress they made meanwhile.
                fresh = self.health.trusted_for() >= 2 * heartbeat_interval(self.env.settings.stale_after_s)
                end_overdue_jobs(self.env, self.worker_name, check_stall=fresh)
            except Exception as exc:
                log_failure("the deadline scan failed", exc)
            if time.monotonic() >= next_report and not self.stopped.is_set():
                self.report()
                next_report = time.monotonic() + self.report_every

    def report(self) -> None:
        """Reports in; recovers stale jobs once the database has answered quickly for a stale window."""
        try:
            with self.health.timed(), self.env.db.session() as session:
                ours = queries.touch_worker(session, self.worker_name, self.instance)
        except Exception as exc:
            log_failure("worker report failed", exc)
            return
        if not ours:
            log.error("worker name %s was taken by another worker; this worker stops", self.worker_name)
            self.stopped.set()
            os.kill(os.getpid(), signal.SIGTERM)
            return
        try:
            if self.health.trusted_for() >= self.env.settings.stale_after_s:
                if not self.scanning:
                    log.info(
                        "checking for silent jobs: the database answered quickly for %.0f s", self.health.trusted_for()
                    )
                    self.scanning = True
                with self.health.timed():
                    recover_stale_jobs(self.env, self.app, self.health)
            elif self.scanning:
                log.info("not checking for silent jobs until the database answers quickly again")
                self.scanning = False
        except Exception as exc:
            log_failure("the recovery scan failed", exc)
        try:
            send_unsent(self.env, self.app)
        except Exception as exc:
            log_failure("could not send unsent jobs", exc)

    def stop(self) -> None:
        self.stopped.set()
        try:
            with self.env.db.session() as session:
                queries.touch_worker(session, self.worker_name, self.instance, status="offline", current_job_id=None)
            # Deliveries this worker turned down while stopping left their jobs without a message.
            send_unsent(self.env, self.app)
        except Exception:
            log.warning("could not mark worker %s offline", self.worker_name, exc_info=True)


def start_worker(
    app: Celery,
    name: str,
    queues: list[str],
    device: str,
    concurrency: int = 1,
    loglevel: str = "INFO",
    pool: str = "prefork",
    events: bool = False,
    memory_per_job: int | None = None,
) -> None:
    """Runs a Celery worker consuming ``queues`` until it is stopped; blocks.

    ``memory_per_job`` is recorded for submit's estimate check and, on a CPU worker, caps each pool process:
    one that ends a job holding more is replaced (Celery's ``worker_max_memory_per_child``), so a leak or a
    huge job's leftovers do not pile up.

    Raises:
        BadInput: A live worker already holds ``name``.
    """
    from tlq.workers.app import ensure_broker_queues

    runtime = app.tlq_runtime
    runtime.worker_name = name
    monitor = WorkerMonitor(runtime.env, app, name, queues, device, concurrency, memory_per_job)
    if memory_per_job and "gpu" not in queues:
        app.conf.worker_max_memory_per_child = memory_per_job // 1024  # KiB
    monitor.register()
    ensure_broker_queues(app)

    def on_ready(**_kwargs) -> None:
        monitor.on_ready()

    def on_shutdown(**_kwargs) -> None:
        monitor.stop()

    def on_shutting_down(**_kwargs) -> None:
        # Warm shutdown (SIGTERM, `docker stop`): hand the running job back instead of finishing it, so the
        # stop is quick and the job resumes elsewhere from its last checkpoint.
        monitor.stopped.set()
        try:
            release_running_jobs(runtime.env, app, name, monitor.instance)
        except Exception:
            log.warning("could not release the running job; it will be recovered by heartbeat", exc_info=True)

    def on_task_failure(sender=None, exception=None, args=None, **_kwargs) -> None:
        from billiard.exceptions import WorkerLostError

        if isinstance(exception, WorkerLostError) and args and isinstance(args[0], int):
            record_lost_process(runtime.env, app, name, args[0], f"the worker process running it died ({exception})")

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
    worker_shutting_down.connect(on_shutting_down, weak=False)
    task_failure.connect(on_task_failure, weak=False)
    argv = [
        "worker",
        f"--loglevel={loglevel}",
        "-Q",
        ",".join(queues),
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "-P",
        pool,
        "--without-gossip",
        "--without-mingle",
    ]
    if events:
        argv.append("--task-events")
    app.worker_main(argv)
