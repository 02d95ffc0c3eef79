"""Executing one job: claim its row, run its task, record how it ended.

This is a plain function (no Celery), so `tlq run` and tests call it directly; the Celery task is a thin
wrapper around it. Only the job id travels through the broker; everything else is re-read from the row.
"""

from __future__ import annotations

import logging
import os
import threading
import traceback
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from tlq.db import JobStatus, queries
from tlq.plugins.base import BackboneRef, Environment
from tlq.plugins.context import JobContext, JobLost, ProgressCallback
from tlq.plugins.errors import BadInput, JobCancelled, JobTimedOut
from tlq.plugins.registry import Registry
from tlq.plugins.spec import describe_validation_error
from tlq.workers.devices import choose_device, device_label

log = logging.getLogger("tlq.worker")

DEFAULT_STALE_AFTER_S = 60.0


def stale_after() -> float:
    """Seconds without a heartbeat after which a running job counts as abandoned (``TLQ_STALE_AFTER``)."""
    return float(os.environ.get("TLQ_STALE_AFTER", DEFAULT_STALE_AFTER_S))


def heartbeat_interval() -> float:
    """A beat every 5 s, or often enough for three beats within a shorter stale window."""
    return min(5.0, stale_after() / 3)


class _Heartbeat(threading.Thread):
    """Keeps a running job's heartbeat fresh while its task is busy in a long step."""

    def __init__(self, ctx: JobContext, interval: float) -> None:
        super().__init__(name=f"tlq-heartbeat-{ctx.job_id}", daemon=True)
        self.ctx = ctx
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                self.ctx.heartbeat()
            except Exception:  # a missed beat is not fatal; the next one may pass
                log.warning("heartbeat for job %s failed", self.ctx.job_id, exc_info=True)


def execute_job(
    env: Environment,
    job_id: int,
    worker: str,
    tasks: Registry | None = None,
    on_progress: ProgressCallback | None = None,
    heartbeat_every: float | None = None,
    on_claim: Callable[[int], None] | None = None,
    model_cache=None,
) -> str:
    """Runs job ``job_id`` if this call can claim it.

    Returns:
        The final status, or ``"dropped"`` when the job was not there to claim (a duplicate delivery, a
        cancelled or finished job), or ``"lost"`` when another worker took it over mid-run.
    """
    with env.db.session() as session:
        if not queries.claim_job(session, job_id, worker):
            job = queries.get_job(session, job_id)
            state = job.status if job else "missing"
            if state == JobStatus.QUEUED.value and not job.cancel_requested:
                # This worker is stopping: leave the job to the next live worker, which sends it again.
                queries.mark_undispatched(session, job_id)
                log.info("job %s left for another worker: %s is shutting down", job_id, worker)
                return "deferred"
            log.info("job %s is %s; delivery dropped", job_id, state)
            return "dropped"
        job = queries.get_job(session, job_id)
        queries.set_worker_job(session, worker, job_id)
    log.info("job %s (%s on %s) claimed by %s, attempt %s", job_id, job.task, job.backbone, worker, job.attempts)
    if on_claim is not None:
        on_claim(job_id)

    status, error = JobStatus.FAILED, None
    heartbeat: _Heartbeat | None = None
    try:
        device = choose_device(job.device)
        with env.db.session() as session:
            session.get(type(job), job_id).ran_on = device_label(device)
        plugin = (tasks or env.tasks).get(job.task)
        try:
            params = plugin.params.model_validate(job.params)
        except ValidationError as exc:
            raise BadInput(f"{job.task}: {describe_validation_error(exc)}") from exc
        ref = BackboneRef(job.backbone, Path(job.weights) if job.weights else None, job.pretrained)
        ctx = JobContext(
            job_id,
            ref if job.backbone else None,
            env,
            worker,
            device=device,
            attempt=job.attempts,
            timeout_s=job.timeout_s,
            on_progress=on_progress,
            model_cache=model_cache,
        )
        heartbeat = _Heartbeat(ctx, heartbeat_every or heartbeat_interval())
        heartbeat.start()
        plugin.run(ctx, params)
        status = JobStatus.SUCCEEDED
    except JobLost:
        log.warning("job %s was taken over by another worker; this attempt stops without an outcome", job_id)
        return "lost"
    except JobCancelled:
        status, error = JobStatus.CANCELLED, "cancelled on request"
    except JobTimedOut as exc:
        error = f"{exc}; raise --timeout if it needs longer"
    except BadInput as exc:
        error = str(exc)
    except MemoryError:
        error = "ran out of memory; lower --batch-size or use a smaller backbone"
    except Exception as exc:  # any task bug becomes a failed job with its reason; the worker lives on
        error = f"{type(exc).__name__}: {exc}".strip()
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
    finally:
        if heartbeat is not None:
            heartbeat.stopped.set()
    with env.db.session() as session:
        recorded = queries.finish_job(session, job_id, worker, status, error=error and error[:4000])
        queries.set_worker_job(session, worker, None)
    if not recorded:
        log.warning("job %s ended (%s) but was no longer held by %s", job_id, status.value, worker)
        return "lost"
    log.info("job %s %s%s", job_id, status.value, f": {error}" if error else "")
    return status.value
