"""Submitting jobs: validate the spec, write the job row, then send only its id to the right queue."""

from __future__ import annotations

import logging
import os

from tlq.config import mask_secrets_in, mask_url
from tlq.db import claims, queries
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.jobs.spec import JobSpec, validate_spec
from tlq.workers.keeper import is_transient

log = logging.getLogger("tlq.dispatch")


class BrokerUnavailable(RuntimeError):
    """The broker refused or could not be reached; the job row records it as failed."""


def route(device: str, env: Environment, processes: int = 1) -> str:
    """The queue for a job: ``gpu`` for cuda (``gpus-N`` for a job of N processes, a GPU each: only workers that
    own N GPUs take it), ``cpu`` for cpu; ``auto`` takes the GPU queue when a live worker consumes it."""
    from tlq.workers.app import gpu_queue

    if device == "cuda":
        return gpu_queue(processes)
    if device == "cpu":
        return "cpu"
    with env.db.one_statement(read=True) as session:
        return gpu_queue(processes) if queries.has_live_worker(session, gpu_queue(processes)) else "cpu"


def on_cpu_if_routed_there(spec: JobSpec, params, queue: str) -> JobSpec:
    """A ``--device auto`` job of several processes (``--ddp``) sent to the cpu queue runs on CPUs, even if a GPU
    worker (which takes cpu jobs too) runs it: it would otherwise ask that worker for GPUs no one counted on."""
    if spec.device == "auto" and queue == "cpu" and params.run_processes() > 1:
        return spec.model_copy(update={"device": "cpu"})
    return spec


def live_queues(env: Environment) -> set[str]:
    """The queues at least one live worker consumes."""
    with env.db.read_session() as session:
        workers = queries.live_workers(session)
    return {queue for w in workers for queue in w.queues.split(",")}


def waiting_reason(queue: str, status: str, consumed: set[str]) -> str | None:
    """Why a queued job is not starting, when no live worker takes its queue; None otherwise."""
    from tlq.workers.app import gpus_wanted

    if status != "queued" or queue == "local" or queue in consumed:
        return None
    wanted = gpus_wanted(queue)
    if wanted is not None and wanted > 1:
        largest = max((gpus_wanted(q) or 0 for q in consumed), default=0)
        have = f"the largest live GPU worker owns {largest}" if largest else "no GPU worker is live"
        return (
            f"waiting for a worker with {wanted} GPUs: {have}; start `tlq worker --gpus all` on a host with "
            f"{wanted} GPUs, or resubmit with a smaller --ddp"
        )
    if queue == "gpu":
        return "waiting for a GPU worker: none is live; start `tlq worker --queues gpu` on a host with a GPU"
    return f"waiting for a worker: none is live on the {queue} queue; start one with `tlq worker`"


def machine_memory() -> int | None:
    """This machine's physical memory in bytes, when the platform says."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(env: Environment, plugin, params, spec: JobSpec, queue: str) -> None:
    """Refuses a job whose estimated memory exceeds what any live worker of ``queue`` has per job (this machine's
    memory for `tlq run`), naming the numbers and the fix. Queues with no live worker are not judged."""
    if plugin.memory is None:
        return
    if queue == "local":
        budget, where = machine_memory(), "this machine"
    else:
        with env.db.read_session() as session:
            budgets = [w.memory_bytes for w in queries.live_workers(session, queue=queue) if w.memory_bytes]
        budget, where = (max(budgets), f"the largest {queue} worker") if budgets else (None, "")
    if not budget:
        return
    need = plugin.memory(params, env, spec.backbone_ref)
    if need is None or need.total <= budget:
        return
    from tlq.ml.memory import gib

    fits = need.largest_batch(budget)
    fix = (
        f"lower --batch-size to {fits} (about {gib(need.fixed + need.per_image * fits)})"
        if fits
        else "use a smaller backbone or --image-size"
    )
    raise BadInput(f"this job needs about {gib(need.total)} ({need.what}) but {where} has {gib(budget)} per job; {fix}")


def create_job_row(env: Environment, spec: JobSpec, queue: str, params: dict) -> int:
    with env.db.one_statement() as session:
        return queries.insert_job(session, **spec.row_fields(queue, params))


def submit(env: Environment, spec: JobSpec, app=None) -> int:
    """Validates ``spec``, writes its job row and publishes the job id.

    Returns:
        The new job's id.

    Raises:
        BadInput: The spec cannot work; nothing was written or queued.
        BrokerUnavailable: The broker could not take the message; the job row is marked failed with why.
    """
    plugin, params = validate_spec(spec, env)
    queue = route(spec.device, env, params.run_processes())
    spec = on_cpu_if_routed_there(spec, params, queue)
    check_memory(env, plugin, params, spec, queue)
    return _queue(env, spec, params.model_dump(mode="json"), app, queue)


def submit_group(env: Environment, specs: list[JobSpec], name: str | None, group_spec: dict, app=None):
    """Submits several jobs as one group (a sweep): every spec is validated before any row is written.

    Returns:
        The group id and the job ids, in the order of ``specs``.

    Raises:
        BadInput: One of the specs cannot work (the message names which); nothing was written or queued.
        BrokerUnavailable: The broker could not take a message; that job and the rest are marked failed.
    """
    from tlq.db import results

    validated = []
    for number, spec in enumerate(specs, start=1):
        try:
            plugin, params = validate_spec(spec, env)
            queue = route(spec.device, env, params.run_processes())
            spec = on_cpu_if_routed_there(spec, params, queue)
            check_memory(env, plugin, params, spec, queue)
            validated.append((spec, params.model_dump(mode="json"), queue))
        except BadInput as exc:
            raise BadInput(f"run {number} of {len(specs)} ({describe_run(spec)}): {exc}") from exc
    with env.db.session() as session:
        group_id = results.create_group(session, name, group_spec)
    app = app or _app(env)
    job_ids: list[int] = []
    for spec, params, queue in validated:
        spec = spec.model_copy(update={"group_id": group_id})
        job_ids.append(_queue(env, spec, params, app, queue))
    return group_id, job_ids


def describe_run(spec: JobSpec) -> str:
    """A short label of one run of a sweep: its backbone and parameters."""
    parts = [spec.backbone or ""] + [f"{k}={v}" for k, v in spec.params.items()]
    return " ".join(p for p in parts if p)


def _app(env: Environment):
    from tlq.workers.app import create_app

    return create_app(env.settings)


def _queue(env: Environment, spec: JobSpec, params: dict, app, queue: str) -> int:
    job_id = create_job_row(env, spec, queue, params)
    app = app or _app(env)
    from tlq.workers.app import job_label, publish

    try:
        publish(app, job_id, queue, spec.priority, job_label(job_id, spec.task, spec.backbone))
    except Exception as exc:
        reason = mask_secrets_in(
            f"cannot reach the broker at {mask_url(env.settings.broker_url)} ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); start it or point TLQ_BROKER_URL at one that runs"
        )
        with env.db.session() as session:
            claims.fail_queued(session, job_id, reason)
        raise BrokerUnavailable(f"job {job_id} was not queued: {reason}") from exc
    # Confirmed only now that the publish returned; if this process dies first, or the database is away now, the
    # send hold the new row carries expires and a live worker sends the job again (a second message: only one
    # delivery can claim the job).
    try:
        with env.db.one_statement() as session:
            claims.confirm_sent(session, job_id)
    except Exception as exc:
        if not is_transient(exc):
            raise
        log.warning("job %s was queued, but the database could not record that it was sent: %s", job_id, exc)
    log.info("job %s queued on %s", job_id, queue)
    return job_id


def run_here(env: Environment, spec: JobSpec, on_progress=None) -> int:
    """Validates and runs a job in this process, with no broker or worker; records the same rows.

    Returns:
        The job's id.
    """
    from tlq.workers.execute import execute_job

    plugin, params = validate_spec(spec, env)
    check_memory(env, plugin, params, spec, "local")
    job_id = create_job_row(env, spec, "local", params.model_dump(mode="json"))
    from tlq.workers.app import default_worker_name

    execute_job(env, job_id, f"local-{default_worker_name()}", on_progress=on_progress)
    return job_id


__all__ = ["BadInput", "BrokerUnavailable", "route", "run_here", "submit", "submit_group"]
