"""A worker's life around the Celery consumer: registering itself, reporting in, recovering jobs.

The database, not the broker, knows which jobs run where, so recovery does not lean on the broker:

- a job whose heartbeat stopped (its worker was killed, its machine died) is put back in the queue by any
  live worker within ``TLQ_STALE_AFTER`` seconds, or failed once it is out of attempts;
- a job whose pool process died under it is requeued (or failed) at once, with the reason;
- a worker told to stop (SIGTERM) puts its running job back without spending an attempt;
- jobs queued before the Redis broker (re)started are sent again, since their messages may be gone with it.

Every resend is safe: a duplicate delivery finds the job no longer queued and is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading

from celery import Celery
from celery.signals import task_failure, worker_ready, worker_shutdown, worker_shutting_down

from tlq.db import JobStatus, queries
from tlq.db.models import Job, utcnow
from tlq.plugins.base import Environment
from tlq.workers.app import publish
from tlq.workers.execute import stale_after

log = logging.getLogger("tlq.worker")

REPORT_INTERVAL_S = 5.0
CLOCK_MARGIN = dt.timedelta(seconds=5)  # messages sent this soon after a broker start may predate it


def recover_stale_jobs(env: Environment, app: Celery, older_than_s: float) -> list[int]:
    """Requeues running jobs silent for ``older_than_s`` and publishes them again; returns their ids."""
    with env.db.session() as session:
        requeued, failed = queries.requeue_stale_jobs(session, utcnow() - dt.timedelta(seconds=older_than_s))
        targets = {j.id: (j.queue, j.priority) for j in session.query(Job).filter(Job.id.in_(requeued))}
    for job_id in failed:
        log.warning("job %s failed: its worker stopped responding and it has no attempts left", job_id)
    for job_id in requeued:
        queue, priority = targets[job_id]
        log.warning("job %s had no heartbeat for %.0f s; requeued on %s", job_id, older_than_s, queue)
        publish(app, job_id, queue, priority)
    return requeued


def broker_started_at(broker_url: str) -> dt.datetime | None:
    """When a Redis broker last started (from its uptime); None for brokers that keep messages on disk."""
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        uptime = int(client.info("server")["uptime_in_seconds"])
    finally:
        client.close()
    return utcnow() - dt.timedelta(seconds=uptime)


def redispatch_lost_messages(env: Environment, app: Celery) -> list[int]:
    """Sends again the queued jobs that have no message: handed back by a stopping worker, or queued before
    the Redis broker last started. Returns their ids."""
    started = broker_started_at(env.settings.broker_url)
    with env.db.session() as session:
        claimed = queries.claim_redispatch(session, started + CLOCK_MARGIN if started else None)
    for job_id, queue, priority in claimed:
        publish(app, job_id, queue, priority)
    if claimed:
        log.warning("sent %d queued job(s) again (no message in the broker for them)", len(claimed))
    return [job_id for job_id, _, _ in claimed]


def release_running_jobs(env: Environment, name: str) -> list[int]:
    """Marks this worker as stopping (it claims nothing more) and puts its running jobs back in the queue;
    they stop at their next step, and a live worker sends them on."""
    with env.db.session() as session:
        queries.touch_worker(session, name, status="stopping")
    with env.db.session() as session:
        running = [j.id for j in session.query(Job).filter(Job.status == JobStatus.RUNNING.value, Job.worker == name)]
        released = [j for j in running if queries.release_job(session, j, name, f"released by stopping worker {name}")]
    for job_id in released:
        log.warning("job %s put back in the queue: worker %s is shutting down", job_id, name)
    return released


def record_lost_process(env: Environment, app: Celery, name: str, job_id: int, reason: str) -> None:
    """The pool process running ``job_id`` died: requeue the job at once, or fail it with the reason."""
    with env.db.session() as session:
        outcome = queries.record_worker_loss(session, job_id, name, reason)
        job = queries.get_job(session, job_id)
    if outcome == "requeued":
        publish(app, job_id, job.queue, job.priority)
    if outcome:
        log.warning("job %s %s: %s", job_id, outcome, reason)


def requeue_own_jobs(env: Environment, app: Celery, name: str) -> None:
    """A worker restarting under the same name takes back the jobs its earlier life left running."""
    with env.db.session() as session:
        orphans = [j.id for j in session.query(Job).filter(Job.status == JobStatus.RUNNING.value, Job.worker == name)]
        for job_id in orphans:
            session.query(Job).filter(Job.id == job_id).update({"heartbeat_at": utcnow() - dt.timedelta(days=1)})
    if orphans:
        recover_stale_jobs(env, app, stale_after())


class WorkerMonitor(threading.Thread):
    """Runs in the worker's main process: reports in every few seconds and recovers stale jobs."""

    def __init__(self, env: Environment, app: Celery, name: str, queues: list[str], device: str, concurrency: int):
        super().__init__(name="tlq-worker-monitor", daemon=True)
        self.env = env
        self.app = app
        self.worker_name = name
        self.queues = queues
        self.device = device
        self.concurrency = concurrency
        self.stopped = threading.Event()

    def register(self) -> None:
        with self.env.db.session() as session:
            queries.register_worker(
                session,
                name=self.worker_name,
                hostname=socket.gethostname(),
                pid=os.getpid(),
                queues=",".join(self.queues),
                device=self.device,
                concurrency=self.concurrency,
            )
        requeue_own_jobs(self.env, self.app, self.worker_name)
        try:
            redispatch_lost_messages(self.env, self.app)
        except Exception:
            log.warning("could not check the broker for lost messages", exc_info=True)
        log.info("worker %s registered: queues %s, device %s", self.worker_name, ",".join(self.queues), self.device)

    def run(self) -> None:
        while not self.stopped.wait(REPORT_INTERVAL_S):
            try:
                with self.env.db.session() as session:
                    queries.touch_worker(session, self.worker_name, status="online")
                recover_stale_jobs(self.env, self.app, stale_after())
                redispatch_lost_messages(self.env, self.app)
            except Exception:
                log.warning("worker report failed; retrying", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        try:
            with self.env.db.session() as session:
                queries.touch_worker(session, self.worker_name, status="offline", current_job_id=None)
            # Deliveries this worker turned down while stopping left their jobs without a message.
            redispatch_lost_messages(self.env, self.app)
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
) -> None:
    """Runs a Celery worker consuming ``queues`` until it is stopped; blocks."""
    from tlq.workers.app import ensure_broker_queues

    ensure_broker_queues(app)
    runtime = app.tlq_runtime
    runtime.worker_name = name
    monitor = WorkerMonitor(runtime.env, app, name, queues, device, concurrency)

    def on_ready(**_kwargs) -> None:
        monitor.register()
        monitor.start()

    def on_shutdown(**_kwargs) -> None:
        monitor.stop()

    def on_shutting_down(**_kwargs) -> None:
        # Warm shutdown (SIGTERM, `docker stop`): hand the running job back instead of finishing it, so the
        # stop is quick and the job resumes elsewhere from its last checkpoint.
        monitor.stopped.set()
        try:
            release_running_jobs(runtime.env, name)
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
