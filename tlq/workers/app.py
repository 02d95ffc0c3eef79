"""The Celery app factory. No app exists at import time; the CLI and each worker build their own.

Only JSON crosses the broker, and only a job id: the job row is the source of truth.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import socket
import sys
import time
import traceback

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init
from kombu.transport import sqlalchemy as kombu_sqlalchemy

from tlq.config import Settings, mask_secrets_in
from tlq.env import Environment

TASK_NAME = "tlq.run_job"
QUEUES = ("cpu", "gpu")


def gpu_queue(gpus: int) -> str:
    """The queue of a job that takes ``gpus`` GPUs of one worker: ``gpu`` for one, ``gpus-N`` for N (finetune's
    ``--ddp N``), which only a worker owning N or more consumes."""
    return "gpu" if gpus <= 1 else f"gpus-{gpus}"


def gpu_queues(owned: int) -> list[str]:
    """The GPU queues a worker owning ``owned`` GPUs consumes: gpu, and gpus-2 up to gpus-``owned``."""
    return [gpu_queue(n) for n in range(1, max(1, owned) + 1)]


def gpus_wanted(queue: str) -> int | None:
    """How many GPUs a job on ``queue`` takes (``gpus-4``: 4, ``gpu``: 1); None for a queue of no GPU."""
    if queue == "gpu":
        return 1
    prefix, _, count = queue.partition("-")
    return int(count) if prefix == "gpus" and count.isascii() and count.isdecimal() else None


log = logging.getLogger("tlq.worker")


def default_worker_name() -> str:
    """HOST-PID-XXXX: unique even for two containers that share a hostname and a pid."""
    return f"{socket.gethostname().split('.')[0]}-{os.getpid()}-{secrets.token_hex(2)}"


def transport_options(broker_url: str, visibility_timeout_s: float | None) -> dict:
    """Broker options: priorities on Redis, with ``visibility_timeout_s`` (``Settings.visibility_timeout_s``;
    None keeps Redis's 1 h); busy timeouts for the embedded SQLite broker."""
    if broker_url.startswith(("redis://", "rediss://")):
        options = {
            "priority_steps": list(range(10)),
            "sep": ":",
            "queue_order_strategy": "priority",
        }
        if visibility_timeout_s is not None:
            timeout = visibility_timeout_s
            options["visibility_timeout"] = timeout
            # kombu sweeps for overdue messages every interval x throttle seconds (100 s by default); a short
            # timeout needs sweeps to match.
            options["unacked_restore_interval"] = max(1, min(10, int(timeout / 2)))
            options["unacked_restore_throttle"] = 1
        return options
    if broker_url.startswith("sqla+sqlite"):
        return {"connect_args": {"timeout": 30}}
    return {}


class EmbeddedTransport(kombu_sqlalchemy.Transport):
    """kombu's SQLAlchemy transport, polling every 0.05 s instead of every second.

    The stock transport cannot take ``polling_interval`` as an option (it hands every option to
    create_engine), and its one-second sleep between fetches made the embedded broker run about one small
    job per second per worker.
    """

    polling_interval = 0.05


def celery_broker(broker_url: str) -> tuple[str, type | None]:
    """The URL and transport Celery gets: the embedded broker goes through EmbeddedTransport."""
    for prefix in ("sqla+", "sqlalchemy+"):
        if broker_url.startswith(prefix):
            return broker_url[len(prefix) :], EmbeddedTransport
    return broker_url, None


class WorkerRuntime:
    """What a worker process holds: its settings, database and name. Built per app, never a module global."""

    def __init__(self, settings: Settings) -> None:
        from tlq.workers.model_cache import ModelCache

        self.env = Environment(settings)
        self.worker_name = default_worker_name()
        self.model_cache = ModelCache(settings.model_cache)
        self.threads_per_process: int | None = None  # set by a worker whose pool processes share the cores
        self.gpus: list | None = None  # `tlq worker --gpus` (tlq.workers.gpus.Gpu): pool process i uses gpus[i]
        self.job_gpus = None  # in such a pool process: the worker's GPUs as its jobs share them (JobGpus)
        self.gpu_lock_dir: str | None = None  # their job locks: a folder of this worker's own (mode 0700)

    def run(self, job_id) -> str:
        from tlq.workers.execute import execute_job

        if isinstance(job_id, bool) or not isinstance(job_id, int):
            log.error("refused a message whose job id is %r, not an integer", job_id)
            return "refused"
        return execute_job(self.env, job_id, self.worker_name, model_cache=self.model_cache, gpus=self.job_gpus)


class SecretsFilter(logging.Filter):
    """Masks URL passwords and ``password=`` pairs in every log line and traceback a worker writes: driver and
    broker errors quote the URL they failed on, password and all."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = mask_secrets_in(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = mask_secrets_in("".join(traceback.format_exception(*record.exc_info)).rstrip())
        return True


def _mask_logs(logger: logging.Logger, **_kwargs) -> None:
    for handler in logger.handlers:
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(SecretsFilter())


def create_app(settings: Settings) -> Celery:
    """Builds the Celery app for ``settings``, with the ``tlq.run_job`` task registered."""
    url, transport = celery_broker(settings.broker_url)
    app = Celery("tlq", broker=url, set_as_current=False)
    app.conf.update(
        broker_transport=transport,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        event_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        # tlq requeues a job whose pool process died itself (see lifecycle.record_lost_process), with the reason
        # and the attempt counted; the broker message is acknowledged rather than redelivered forever.
        task_reject_on_worker_lost=False,
        worker_prefetch_multiplier=1,
        task_default_queue="cpu",
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options(settings.broker_url, settings.visibility_timeout_s),
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        broker_heartbeat=10,
        # How long the pool waits, after a child died, for a result it may still have sent (default 10 s);
        # tlq requeues the job itself, so a short wait gets it running again sooner.
        worker_lost_wait=2.0,
    )
    runtime = WorkerRuntime(settings)
    app.tlq_runtime = runtime

    @app.task(name=TASK_NAME, ignore_result=True, bind=True)
    def run_job(task, job_id) -> str:
        from tlq.workers.execute import DatabaseAway

        try:
            return runtime.run(job_id)
        except DatabaseAway as exc:
            # The message would be spent with the job still queued: send it again, for when the database is back.
            log.error("%s; the job is sent again in 10 s", exc)
            raise task.retry(countdown=10, max_retries=None, shadow=task.request.shadow) from exc

    def _after_fork(**_kwargs) -> None:
        # Pooled connections must not cross a fork: the child opens its own.
        if "db" in runtime.env.__dict__:
            runtime.env.db.dispose()
        # Pool children are marked daemonic, which forbids the DataLoader processes that decode images in
        # parallel. The child waits for its loaders itself, and they exit when it dies (torch's watchdog).
        multiprocessing.current_process()._config["daemon"] = False
        if runtime.threads_per_process:
            share_cores(runtime.threads_per_process)
        if runtime.gpus:  # `tlq worker --gpus`: this pool process's own GPU, before CUDA starts
            from billiard.process import current_process

            from tlq.workers.gpus import JobGpus, pin

            own = pin([gpu.index for gpu in runtime.gpus], current_process().index)
            runtime.job_gpus = JobGpus(runtime.gpus, int(own), runtime.gpu_lock_dir)
            log.info("pool process %s uses GPU %s", os.getpid(), own)

    worker_process_init.connect(_after_fork, weak=False)
    after_setup_logger.connect(_mask_logs, weak=False)
    after_setup_task_logger.connect(_mask_logs, weak=False)
    return app


def share_cores(threads: int) -> None:
    """Caps this pool process's compute threads at ``threads`` (the cores over the worker's concurrency): pool
    processes that each start a thread per core oversubscribe the machine, and OpenMP's spinning threads then
    make a job many times slower. A thread count the user set (``OMP_NUM_THREADS``) is kept; one OpenMP would
    ignore (blank, "abc", "0", "-1") is replaced, as OpenMP would then take a thread per core."""
    chosen = _thread_count(os.environ.get("OMP_NUM_THREADS", ""))
    if chosen is None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("MKL_NUM_THREADS", str(threads))
    if "torch" in sys.modules:  # imported before the fork: set it here
        sys.modules["torch"].set_num_threads(chosen or threads)


def _thread_count(text: str) -> int | None:
    """The thread count ``OMP_NUM_THREADS`` gives a process (the first of a nested list: "4,2"), or None for a
    value OpenMP does not take."""
    first = text.split(",")[0].strip()
    return int(first) if first.isascii() and first.isdigit() and int(first) > 0 else None


def ensure_broker_queues(app: Celery, queues=QUEUES, attempts: int = 10) -> None:
    """Creates the cpu and gpu queues in the embedded (SQLite) broker before anything uses them.

    kombu's SQLAlchemy transport creates a queue row on first use and, when two processes do so at once, one
    of them fails with a unique-constraint error that kombu does not catch (seen with four workers starting
    together). Creating them here, retrying on that error, keeps workers and `tlq submit` clear of it.
    """
    ready = app.__dict__.setdefault("_tlq_queues_ready", set())
    queues = [q for q in dict.fromkeys((*QUEUES, *queues)) if q not in ready]  # cpu and gpu always, then those asked
    if not queues or app.conf.broker_transport is not EmbeddedTransport:
        return
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with app.connection_for_write() as conn:
                channel = conn.default_channel
                for queue in queues:
                    channel.queue_declare(queue=queue, durable=True, auto_delete=False)
            ready.update(queues)
            return
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def redis_priority(priority: int) -> int:
    """tlq's priority (9 most urgent) as Celery's Redis priority (0 most urgent)."""
    return 9 - max(0, min(9, priority))


def job_label(job_id: int, task: str, backbone: str | None) -> str:
    """The name a job's message shows in Flower, `celery events`, `celery inspect active` and the worker's log:
    ``tlq.run_job[finetune resnet18 #42]``. Display only: the worker runs the task by its real name and reads
    everything but the id from the job's row."""
    what = " ".join(part for part in (task, backbone) if part)
    what = "".join(c if c.isprintable() else "?" for c in what)[:120]
    return f"{TASK_NAME}[{what} #{job_id}]"


def publish(app: Celery, job_id: int, queue: str, priority: int = 0, label: str | None = None) -> None:
    """Sends a job id to ``queue``, shown under ``label`` (``job_label``) by Celery's tools; raises the broker's
    error when it cannot be reached."""
    ensure_broker_queues(app, (queue,))
    app.send_task(
        TASK_NAME,
        args=[job_id],
        shadow=label,
        queue=queue,
        priority=redis_priority(priority),
        retry=True,
        retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 1.0},
    )
