"""The Celery app factory. No app exists at import time; the CLI and each worker build their own.

Only JSON crosses the broker, and only a job id: the job row is the source of truth.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import socket

from celery import Celery
from celery.signals import worker_process_init

from tlq.config import Settings
from tlq.plugins.base import Environment

TASK_NAME = "tlq.run_job"
QUEUES = ("cpu", "gpu")

log = logging.getLogger("tlq.worker")


def default_worker_name() -> str:
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}"


def transport_options(broker_url: str) -> dict:
    """Broker options: priorities on Redis; busy timeouts for the embedded SQLite broker."""
    if broker_url.startswith(("redis://", "rediss://")):
        options = {
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        }
        if os.environ.get("TLQ_VISIBILITY_TIMEOUT"):
            options["visibility_timeout"] = float(os.environ["TLQ_VISIBILITY_TIMEOUT"])
        return options
    if broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


class WorkerRuntime:
    """What a worker process holds: its settings, database and name. Built per app, never a module global."""

    def __init__(self, settings: Settings) -> None:
        self.env = Environment(settings)
        self.worker_name = default_worker_name()

    def run(self, job_id) -> str:
        from tlq.workers.execute import execute_job

        if isinstance(job_id, bool) or not isinstance(job_id, int):
            log.error("refused a message whose job id is %r, not an integer", job_id)
            return "refused"
        return execute_job(self.env, job_id, self.worker_name)


def create_app(settings: Settings) -> Celery:
    """Builds the Celery app for ``settings``, with the ``tlq.run_job`` task registered."""
    app = Celery("tlq", broker=settings.broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options(settings.broker_url),
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        broker_heartbeat=10,
    )
    runtime = WorkerRuntime(settings)
    app.tlq_runtime = runtime

    @app.task(name=TASK_NAME, ignore_result=True)
    def run_job(job_id) -> str:
        return runtime.run(job_id)

    def _after_fork(**_kwargs) -> None:
        # Pooled connections must not cross a fork: the child opens its own.
        if "db" in runtime.env.__dict__:
            runtime.env.db.dispose()
        # Pool children are marked daemonic, which forbids the DataLoader processes that decode images in
        # parallel. The child waits for its loaders itself, and they exit when it dies (torch's watchdog).
        multiprocessing.current_process()._config["daemon"] = False

    worker_process_init.connect(_after_fork, weak=False)
    return app


def redis_priority(priority: int) -> int:
    """tlq's priority (9 most urgent) as Celery's Redis priority (0 most urgent)."""
    return 9 - max(0, min(9, priority))


def publish(app: Celery, job_id: int, queue: str, priority: int = 0) -> None:
    """Sends a job id to ``queue``; raises the broker's error when it cannot be reached."""
    app.send_task(
        TASK_NAME,
        args=[job_id],
        queue=queue,
        priority=redis_priority(priority),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )
