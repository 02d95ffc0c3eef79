"""A worker's life around the Celery consumer: registering itself, reporting in, recovering stale jobs.

The database, not the broker, knows which jobs run where: a job whose heartbeat stopped (its worker was
killed, its machine died) is put back in the queue by any live worker within ``TLQ_STALE_AFTER`` seconds.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading

from celery import Celery
from celery.signals import worker_ready, worker_shutdown

from tlq.db import JobStatus, queries
from tlq.db.models import Job, utcnow
from tlq.plugins.base import Environment
from tlq.workers.app import publish

log = logging.getLogger("tlq.worker")

REPORT_INTERVAL_S = 5.0
DEFAULT_STALE_AFTER_S = 60.0


def stale_after() -> float:
    return float(os.environ.get("TLQ_STALE_AFTER", DEFAULT_STALE_AFTER_S))


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
        log.info("worker %s registered: queues %s, device %s", self.worker_name, ",".join(self.queues), self.device)

    def run(self) -> None:
        ticks = 0
        while not self.stopped.wait(REPORT_INTERVAL_S):
            ticks += 1
            try:
                with self.env.db.session() as session:
                    queries.touch_worker(session, self.worker_name, status="online")
                if ticks % 2 == 0:
                    recover_stale_jobs(self.env, self.app, stale_after())
            except Exception:
                log.warning("worker report failed; retrying", exc_info=True)

    def stop(self) -> None:
        self.stopped.set()
        try:
            with self.env.db.session() as session:
                queries.touch_worker(session, self.worker_name, status="offline", current_job_id=None)
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
) -> None:
    """Runs a Celery worker consuming ``queues`` until it is stopped; blocks."""
    runtime = app.tlq_runtime
    runtime.worker_name = name
    monitor = WorkerMonitor(runtime.env, app, name, queues, device, concurrency)

    def on_ready(**_kwargs) -> None:
        monitor.register()
        monitor.start()

    def on_shutdown(**_kwargs) -> None:
        monitor.stop()

    worker_ready.connect(on_ready, weak=False)
    worker_shutdown.connect(on_shutdown, weak=False)
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
    app.worker_main(argv)
