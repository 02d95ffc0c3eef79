"""Executing one job: claim its row under a lease, run its task, record how it ended.

This is a plain function (no Celery), so `tlq run` and tests call it directly; the Celery task is a thin
wrapper around it. Only the job id travels through the broker; everything else is re-read from the row.
While the task runs, its lease keeper (``tlq.workers.keeper``) does every database write of the attempt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pydantic import ValidationError

from tlq.config import mask_secrets_in
from tlq.db import Job, JobStatus, claims, queries
from tlq.env import Environment
from tlq.errors import BadInput, JobCancelled, JobTimedOut
from tlq.ml.feature_cache import FeatureCache
from tlq.plugins.backbone import BackboneRef
from tlq.plugins.context import JobContext, JobLost, JobOrigin, ProgressCallback
from tlq.plugins.params import describe_validation_error
from tlq.plugins.registry import Registry
from tlq.workers.devices import choose_device, device_label
from tlq.workers.gpus import free_cached_memory
from tlq.workers.job_log import job_log
from tlq.workers.keeper import LeaseKeeper, Timing, is_transient

log = logging.getLogger("tlq.worker")


class DatabaseAway(RuntimeError):
    """The database stayed unreachable for the whole outage window while a job was being claimed."""


def heartbeat_interval(stale_after_s: float) -> float:
    """A beat every 5 s, or often enough for three beats within a shorter stale window."""
    return min(5.0, stale_after_s / 3)


def keeper_timing(env: Environment, heartbeat_every: float | None = None) -> Timing:
    settings = env.settings
    beat = heartbeat_every or heartbeat_interval(settings.stale_after_s)
    # Retries during an outage come at least as often as beats, so the first beat after it is never late.
    return Timing(beat_every=beat, outage_s=settings.db_outage_s, max_backoff=min(5.0, beat))


def claim_with_retry(env: Environment, job_id: int, worker: str) -> tuple[str | None, Job | str, int]:
    """Claims ``job_id``, riding out a database outage of up to ``TLQ_DB_OUTAGE_S``. The same transaction
    records what the job runs on and that it is the worker's current job.

    Returns:
        (lease, the claimed job, how many claims of it came before), or (None, the job's status when it could
        not be claimed, 0).

    Raises:
        DatabaseAway: The database stayed unreachable; the delivery should be retried later.
    """
    start, pause = time.monotonic(), 0.25
    lease = claims.new_lease()  # the same on every try: a claim whose reply was lost is still ours
    labels = _device_labels()  # asked before the claim's transaction: never while it holds the row (or file)
    while True:
        try:
            # Read once per process, here where an outage is ridden out: the job's origin needs it once it runs.
            env.db.instance_id  # noqa: B018
            with env.db.session() as session:
                # A device this worker cannot give is not in ``labels``: the job fails with why once it starts.
                won = claims.claim_job(session, job_id, worker, socket.gethostname(), os.getpid(), lease, labels)
                if won is not None:
                    return won.lease, won.job, won.earlier_claims
                job = queries.get_job(session, job_id)
                if job is not None and job.status == JobStatus.QUEUED.value:
                    # This worker is stopping: leave the job to the next live worker, which sends it again.
                    claims.hand_back_message(session, job_id)
                    return None, "deferred", 0
                return None, job.status if job else "missing", 0
        except Exception as exc:
            if not is_transient(exc):
                raise
            if time.monotonic() - start > env.settings.db_outage_s:
                raise DatabaseAway(f"could not claim job {job_id}: the database is unreachable ({exc})") from exc
            log.warning("job %s: the database is unreachable (%s); retrying the claim", job_id, exc)
            time.sleep(pause)
            pause = min(5.0, pause * 2)


def _device_labels() -> dict[str, str]:
    """What a job asking for each device would run on here, for its ``ran_on`` column; a device this worker
    cannot give (or cannot even describe) is left out."""
    labels = {}
    for requested in ("cpu", "auto", "cuda"):
        try:
            labels[requested] = device_label(choose_device(requested))
        except Exception as exc:  # no GPU, or one that fails to start: execute_job fails the job with why
            log.debug("no ran_on label for --device %s: %s", requested, exc)
    return labels


def params_digest(job: Job) -> str:
    """sha256 of what defines a job's result: task, backbone, weights and parameters."""
    spec = {"task": job.task, "backbone": job.backbone, "weights": job.weights, "pretrained": job.pretrained}
    return hashlib.sha256(json.dumps({**spec, "params": job.params}, sort_keys=True).encode()).hexdigest()


def execute_job(
    env: Environment,
    job_id: int,
    worker: str,
    tasks: Registry | None = None,
    on_progress: ProgressCallback | None = None,
    heartbeat_every: float | None = None,
    on_claim: Callable[[int], None] | None = None,
    model_cache=None,
    gpus=None,
) -> str:
    """Runs job ``job_id`` if this call can claim it.

    ``gpus`` (``tlq.workers.gpus.JobGpus``, in a `tlq worker --gpus` pool process): a GPU job first holds its
    process's own GPU (waiting while a ``--ddp`` job borrows it), and a ``--ddp`` job gathers more through
    ``ctx.gpus``.

    Returns:
        The final status; ``"dropped"`` when the job was not there to claim (a duplicate delivery, a
        cancelled or finished job); ``"deferred"`` when this worker is stopping; ``"lost"`` when another
        worker took it over mid-run, or the database stayed away past the outage window.
    """
    lease, job, earlier_claims = claim_with_retry(env, job_id, worker)
    if lease is None:
        if job == "deferred":
            log.info("job %s left for another worker: %s is shutting down", job_id, worker)
            return "deferred"
        log.info("job %s is %s; delivery dropped", job_id, job)
        return "dropped"
    log.info("job %s (%s on %s) claimed by %s, attempt %s", job_id, job.task, job.backbone, worker, job.attempts)
    if on_claim is not None:
        on_claim(job_id)

    claimed = time.monotonic()  # --timeout counts from the claim, as the worker's deadline scan does
    keeper = LeaseKeeper(env.db, job_id, lease, keeper_timing(env, heartbeat_every))
    keeper.start()
    status, error = JobStatus.FAILED, None
    try:
        origin = JobOrigin(job_id, env.db.instance_id, params_digest(job), job.attempts)
        device = choose_device(job.device)
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
            keeper,
            device=device,
            attempt=job.attempts,
            timeout_s=job.timeout_s,
            on_progress=on_progress,
            model_cache=model_cache,
            started=claimed,
            origin=origin,
            feature_cache=FeatureCache.for_home(env.settings.home, env.settings.feature_cache_mb),
            gpus=gpus if device == "cuda" else None,
        )
        if earlier_claims == 0:
            # A first claim never reads what it did not write: files left under this job id by a database that
            # was recreated, or by another database sharing the artifacts directory, are moved aside.
            moved = ctx.artifacts.set_aside()
            if moved is not None:
                log.warning("job %s: its artifact folder held files it did not write; moved to %s", job_id, moved)
        with job_log(ctx):  # its lines become the job.log artifact `tlq ui` shows
            if ctx.gpus is not None:
                ctx.gpus.gather(1, job_id, lambda why: ctx.progress(None, None, why))
            plugin.run(ctx, params)
        if keeper.lost.is_set():  # a task that ended without a last check must not record an outcome it lost
            raise JobLost(keeper.lost_reason)
        status = JobStatus.SUCCEEDED
    except JobLost:
        status = None
    except JobCancelled:
        status, error = JobStatus.CANCELLED, claims.CANCELLED_ON_REQUEST
    except JobTimedOut as exc:
        error = f"{exc}; raise --timeout if it needs longer"
    except BadInput as exc:
        error = str(exc)
    except MemoryError:
        error = "ran out of memory; lower --batch-size or use a smaller backbone"
    except Exception as exc:  # any task bug becomes a failed job with its reason; the worker lives on
        if keeper.lost.is_set():
            status = None  # the task broke because its attempt was already over; that is not its outcome
        else:
            error = mask_secrets_in(f"{type(exc).__name__}: {exc}".strip())
            log.error("job %s failed:\n%s", job_id, mask_secrets_in(traceback.format_exc()))
    except BaseException:  # Ctrl-C in `tlq run`, or the process told to exit: the job must not stay running
        if gpus is not None:
            gpus.release()
        keeper.close(JobStatus.CANCELLED, "interrupted while it ran (Ctrl-C or the process was told to exit)")
        raise
    if gpus is not None:
        if gpus.held:
            free_cached_memory()
        gpus.release()
    if status is None:
        keeper.close(None)
        log.warning("job %s: %s; this attempt stops without an outcome", job_id, keeper.lost_reason)
        return "lost"
    recorded = keeper.close(status, error=error and mask_secrets_in(error)[:4000])  # masked whole, then cut
    if recorded is None:
        log.error("job %s ended (%s) but the database stayed unreachable; it will be recovered", job_id, status)
        return "lost"
    if not recorded:
        log.warning("job %s ended (%s) but was no longer held by this attempt", job_id, status.value)
        return "lost"
    log.info("job %s %s%s", job_id, status.value, f": {error}" if error else "")
    return status.value
