"""A worker's life around the Celery consumer: registering itself, reporting in, recovering jobs.

The database, not the broker, knows which jobs run where, so recovery does not lean on the broker. Every
ending without an outcome goes through ``claims.recover`` (one decision: cancel, fail or requeue), in
``tlq.workers.recovery``; this module decides when:

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

import logging
import os
import secrets
import signal
import socket
import tempfile
import threading
import time

from celery import Celery
from celery.signals import task_failure, task_revoked, worker_ready, worker_shutdown, worker_shutting_down

from tlq.db import queries
from tlq.db.models import WorkerRecord
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.workers.execute import heartbeat_interval
from tlq.workers.gpus import as_json
from tlq.workers.keeper import is_transient
from tlq.workers.recovery import (
    DatabaseHealth,
    cancel_revoked_job,
    end_overdue_jobs,
    process_alive,
    record_lost_process,
    recover_stale_jobs,
    release_running_jobs,
    requeue_own_jobs,
)
from tlq.workers.sending import send_unsent

log = logging.getLogger("tlq.worker")

REPORT_INTERVAL_S = 5.0
DEADLINE_TICK_S = 1.0


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
        gpus: list | None = None,
    ):
        super().__init__(name="tlq-worker-monitor", daemon=True)
        self.gpus = gpus
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
                gpus=as_json(self.gpus) if self.gpus else None,
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
                queries.touch_worker(session, self.worker_name, self.instance, status="offline")
            # Deliveries this worker turned down while stopping left their jobs without a message.
            send_unsent(self.env, self.app)
        except Exception:
            log.warning("could not mark worker %s offline", self.worker_name, exc_info=True)


def threads_per_process(concurrency: int, pool: str) -> int | None:
    """The compute threads each of a prefork worker's ``concurrency`` processes gets: its share of the cores this
    process may run on (a taskset or a container's cpuset leaves fewer than the machine has); None for one process,
    or a pool that runs its jobs in one process (solo, threads), which keep torch's own count."""
    if concurrency <= 1 or pool != "prefork":
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // concurrency)


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
    gpus: list | None = None,
    shown_gpus: list | None = None,
) -> None:
    """Runs a Celery worker consuming ``queues`` until it is stopped; blocks.

    ``gpus`` (``tlq worker --gpus``, ``tlq.workers.gpus.Gpu``): one pool process per GPU, each pinned to its own
    as it starts, and recorded with the worker for `tlq workers`. ``shown_gpus``: the GPUs a worker without
    ``--gpus`` sees (all in each pool process), recorded alike.

    ``memory_per_job`` is recorded for submit's estimate check and, on a CPU worker, caps each pool process:
    one that ends a job holding more is replaced (Celery's ``worker_max_memory_per_child``), so a leak or a
    huge job's leftovers do not pile up.

    Raises:
        BadInput: A live worker already holds ``name``.
    """
    from tlq.workers.app import ensure_broker_queues

    runtime = app.tlq_runtime
    runtime.worker_name = name
    runtime.threads_per_process = threads_per_process(concurrency, pool)
    runtime.gpus = list(gpus) if gpus else None
    if gpus:  # the pool processes' job locks on these GPUs: private to this worker, made before the pool forks
        runtime.gpu_lock_dir = tempfile.mkdtemp(prefix="tlq-gpu-jobs-")
    monitor = WorkerMonitor(runtime.env, app, name, queues, device, concurrency, memory_per_job, shown_gpus or gpus)
    if memory_per_job and "gpu" not in queues:
        app.conf.worker_max_memory_per_child = memory_per_job // 1024  # KiB
    monitor.register()
    ensure_broker_queues(app, queues)

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

    def on_task_revoked(request=None, terminated=False, expired=False, **_kwargs) -> None:
        args = getattr(request, "args", None) or ()
        if expired or not args or isinstance(args[0], bool) or not isinstance(args[0], int):
            return
        try:
            cancel_revoked_job(runtime.env, args[0], terminated)
        except Exception as exc:
            log_failure(f"job {args[0]} was revoked from Celery but could not be cancelled", exc)

    worker_ready.connect(on_ready, weak=False)
    task_revoked.connect(on_task_revoked, weak=False)
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
