"""The queries the CLI and the workers run: jobs through their life, metrics, artifacts and workers.

Every state change of a job is a conditional update, so two workers (or a worker and `tlq cancel`) racing on
the same row cannot both win.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, case, func, select, update
from sqlalchemy.orm import Session

from tlq.db.models import Artifact, Job, JobStatus, Metric, WorkerRecord, utcnow


def _insert_for(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _upsert(session: Session, table: Table, values: dict[str, Any], keys: Iterable[str]) -> None:
    insert = _insert_for(session)
    keys = list(keys)
    stmt = insert(table).values(**values)
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_={k: stmt.excluded[k] for k in values if k not in keys})
    session.execute(stmt)


# --- jobs -----------------------------------------------------------------------------------------------------


def create_job(session: Session, **fields: Any) -> Job:
    """Inserts a queued job and returns it with its id."""
    job = Job(status=JobStatus.QUEUED.value, **fields)
    session.add(job)
    session.flush()
    return job


def get_job(session: Session, job_id: int) -> Job | None:
    return session.get(Job, job_id)


def list_jobs(
    session: Session,
    status: str | None = None,
    task: str | None = None,
    backbone: str | None = None,
    limit: int | None = 50,
    tags: dict[str, str] | None = None,
    group: int | None = None,
) -> list[Job]:
    """Jobs, newest first, filtered by the given columns and tags."""
    from tlq.db.results import tag_conditions

    query = select(Job).order_by(Job.id.desc())
    for condition in tag_conditions(tags or {}, session.get_bind().dialect.name):
        query = query.where(condition)
    if group is not None:
        query = query.where(Job.group_id == group)
    if status:
        query = query.where(Job.status == status)
    if task:
        query = query.where(Job.task == task)
    if backbone:
        query = query.where(Job.backbone == backbone)
    if limit:
        query = query.limit(limit)
    return list(session.scalars(query))


def job_statuses(session: Session, job_ids: list[int]) -> dict[int, str]:
    """The status of each of the jobs that exist."""
    return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).tuples().all())


def claim_job(session: Session, job_id: int, worker: str) -> bool:
    """Moves a queued job to running for ``worker``; False when another delivery, a cancel or a worker got it,
    or when ``worker`` is shutting down."""
    now = utcnow()
    stopping = select(WorkerRecord.id).where(WorkerRecord.name == worker, WorkerRecord.status == "stopping").exists()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.cancel_requested.is_(False), ~stopping)
        .values(
            status=JobStatus.RUNNING.value,
            worker=worker,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            error=None,
        )
    )
    return result.rowcount == 1


def finish_job(session: Session, job_id: int, worker: str | None, status: JobStatus, error: str | None = None) -> bool:
    """Records a final status for a running job held by ``worker``; False when the job is no longer theirs."""
    conditions = [Job.id == job_id, Job.status == JobStatus.RUNNING.value]
    if worker is not None:
        conditions.append(Job.worker == worker)
    result = session.execute(
        update(Job).where(*conditions).values(status=status.value, error=error, finished_at=utcnow())
    )
    return result.rowcount == 1


def fail_queued_job(session: Session, job_id: int, error: str) -> None:
    """Marks a job that never started as failed, recording why (a broker that refused it, say)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.FAILED.value, error=error, finished_at=utcnow())
    )


def mark_undispatched(session: Session, job_id: int) -> None:
    """Marks a queued job as having no message in the broker, so the next live worker sends it again."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value).values(dispatched_at=None)
    )


def claim_redispatch(session: Session, broker_started: dt.datetime | None) -> list[tuple[int, str, int]]:
    """Queued jobs with no message in the broker: never sent, handed back by a stopping worker, or sent before
    the broker last (re)started (``broker_started``), so possibly gone with it.

    Each job is claimed for re-sending with a conditional update, so of several workers noticing it only one
    re-sends it. Returns (id, queue, priority) of the claimed jobs.
    """
    lost = Job.dispatched_at.is_(None)
    if broker_started is not None:
        lost = lost | (Job.dispatched_at < broker_started)
    waiting = (Job.status == JobStatus.QUEUED.value, Job.queue != "local", lost)
    candidates = list(session.execute(select(Job.id, Job.queue, Job.priority).where(*waiting)))
    claimed = []
    for job_id, queue, priority in candidates:
        result = session.execute(update(Job).where(Job.id == job_id, *waiting).values(dispatched_at=utcnow()))
        if result.rowcount == 1:
            claimed.append((job_id, queue, priority))
    return claimed


def release_job(session: Session, job_id: int, worker: str, reason: str) -> bool:
    """Puts a running job back in the queue without spending an attempt (its worker is shutting down); it
    has no message until a live worker sends one (``claim_redispatch``)."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.worker == worker)
        .values(
            status=JobStatus.QUEUED.value,
            worker=None,
            attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            progress_stage=reason,
            dispatched_at=None,
        )
    )
    return result.rowcount == 1


def record_worker_loss(session: Session, job_id: int, worker: str, reason: str) -> str | None:
    """After the process running a job died: requeue it, or fail it with ``reason`` once out of attempts.

    Returns:
        "requeued", "failed", "cancelled", or None when the job was no longer this worker's.
    """
    job = session.get(Job, job_id)
    if job is None or job.status != JobStatus.RUNNING.value or job.worker != worker:
        return None
    if job.cancel_requested:
        values, outcome = dict(status=JobStatus.CANCELLED.value, finished_at=utcnow()), "cancelled"
    elif job.attempts >= job.max_attempts:
        values = dict(
            status=JobStatus.FAILED.value,
            finished_at=utcnow(),
            error=f"{reason} on attempt {job.attempts} of {job.max_attempts}; giving up "
            "(raise --max-attempts to allow more)",
        )
        outcome = "failed"
    else:
        values = dict(
            status=JobStatus.QUEUED.value,
            worker=None,
            dispatched_at=utcnow(),
            progress_stage=f"requeued: {reason} on attempt {job.attempts}",
        )
        outcome = "requeued"
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.worker == worker)
        .values(**values)
    )
    return outcome if result.rowcount == 1 else None


def heartbeat(session: Session, job_id: int, worker: str) -> tuple[bool, bool]:
    """Refreshes a running job's heartbeat.

    Returns:
        (still ours, cancel requested). "Still ours" turns False when the job was recovered by someone else.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.worker == worker)
        .values(heartbeat_at=utcnow())
    )
    cancel = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return result.rowcount == 1, bool(cancel)


def update_progress(
    session: Session, job_id: int, worker: str, current: float | None, total: float | None, stage: str | None
) -> None:
    """Records live progress of a running job, only while ``worker`` still holds it."""
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.worker == worker)
        .values(progress_current=current, progress_total=total, progress_stage=stage, heartbeat_at=utcnow())
    )


def request_cancel(session: Session, job_id: int) -> str:
    """Cancels a queued job at once, or asks a running one to stop at its next step.

    Returns:
        "cancelled", "requested", or the job's final status when it had already ended.
    """
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .values(status=JobStatus.CANCELLED.value, cancel_requested=True, finished_at=utcnow())
    )
    if result.rowcount == 1:
        return "cancelled"
    result = session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING.value).values(cancel_requested=True)
    )
    if result.rowcount == 1:
        return "requested"
    status = session.scalar(select(Job.status).where(Job.id == job_id))
    return status or "missing"


def requeue_stale_jobs(session: Session, stale_before: dt.datetime) -> tuple[list[int], list[int]]:
    """Puts running jobs whose heartbeat stopped back in the queue, or fails them when out of attempts.

    Returns:
        (requeued job ids, failed job ids).
    """
    stale = list(
        session.execute(
            select(Job.id, Job.attempts, Job.max_attempts, Job.worker, Job.cancel_requested).where(
                Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < stale_before
            )
        )
    )
    requeued, failed = [], []
    for job_id, attempts, max_attempts, worker, cancel in stale:
        base = update(Job).where(
            Job.id == job_id, Job.status == JobStatus.RUNNING.value, Job.heartbeat_at < stale_before
        )
        if cancel:
            values = dict(status=JobStatus.CANCELLED.value, finished_at=utcnow())
            target = None
        elif attempts >= max_attempts:
            values = dict(
                status=JobStatus.FAILED.value,
                finished_at=utcnow(),
                error=f"worker {worker} stopped responding on attempt {attempts} of {max_attempts}; "
                "giving up (raise --max-attempts to allow more)",
            )
            target = failed
        else:
            values = dict(
                status=JobStatus.QUEUED.value,
                worker=None,
                progress_stage="requeued after worker loss",
                dispatched_at=utcnow(),
            )
            target = requeued
        if session.execute(base.values(**values)).rowcount == 1 and target is not None:
            target.append(job_id)
    return requeued, failed


# --- metrics and artifacts ------------------------------------------------------------------------------------


def record_metric(session: Session, job_id: int, name: str, value: float, step: int = 0, epoch: int | None = None):
    """Stores a metric value; recording the same (name, step) again replaces it, so a resumed job never doubles."""
    _upsert(
        session,
        Metric.__table__,
        dict(job_id=job_id, name=name, step=step, epoch=epoch, value=float(value), time=utcnow()),
        keys=("job_id", "name", "step"),
    )


def delete_metrics_after(session: Session, job_id: int, step: int) -> None:
    """Drops metrics recorded past ``step`` (by an attempt whose checkpoint was lost)."""
    session.execute(Metric.__table__.delete().where(and_(Metric.job_id == job_id, Metric.step > step)))


def metric_history(session: Session, job_id: int, name: str | None = None) -> list[Metric]:
    query = select(Metric).where(Metric.job_id == job_id).order_by(Metric.name, Metric.step)
    if name:
        query = query.where(Metric.name == name)
    return list(session.scalars(query))


def last_metrics(session: Session, job_id: int) -> dict[str, float]:
    """The latest value of each metric of a job."""
    values: dict[str, float] = {}
    for metric in session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step, Metric.id)):
        values[metric.name] = metric.value
    return values


def record_artifact(session: Session, job_id: int, kind: str, path: str, size: int, sha256: str) -> None:
    _upsert(
        session,
        Artifact.__table__,
        dict(job_id=job_id, kind=kind, path=path, bytes=size, sha256=sha256, created_at=utcnow()),
        keys=("job_id", "path"),
    )


def delete_artifact(session: Session, job_id: int, path: str) -> None:
    session.execute(Artifact.__table__.delete().where(Artifact.job_id == job_id, Artifact.path == path))


def list_artifacts(session: Session, job_id: int, kind: str | None = None) -> list[Artifact]:
    query = select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.id)
    if kind:
        query = query.where(Artifact.kind == kind)
    return list(session.scalars(query))


def job_as_dict(session: Session, job: Job, artifacts_dir: Path) -> dict[str, Any]:
    """The JSON form of a job that `tlq show --json` and `tlq jobs --json` print."""

    def iso(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": job.id,
        "task": job.task,
        "status": job.status,
        "backbone": job.backbone,
        "weights": job.weights,
        "pretrained": job.pretrained,
        "params": job.params,
        "metrics": last_metrics(session, job.id),
        "artifacts": [
            {"kind": a.kind, "path": str(artifacts_dir / a.path), "bytes": a.bytes, "sha256": a.sha256}
            for a in list_artifacts(session, job.id)
        ],
        "error": job.error,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "worker": job.worker,
        "queue": job.queue,
        "device": job.device,
        "ran_on": job.ran_on,
        "priority": job.priority,
        "name": job.name,
        "tags": job.tags,
        "parent_id": job.parent_id,
        "group_id": job.group_id,
        "progress": {"current": job.progress_current, "total": job.progress_total, "stage": job.progress_stage},
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "heartbeat_at": iso(job.heartbeat_at),
    }


# --- workers --------------------------------------------------------------------------------------------------


def register_worker(session: Session, **fields: Any) -> None:
    """Records a worker as online, replacing an earlier record of the same name."""
    now = utcnow()
    values = dict(fields, status="online", started_at=now, last_seen=now, current_job_id=None)
    _upsert(session, WorkerRecord.__table__, values, keys=("name",))


def touch_worker(session: Session, name: str, **fields: Any) -> None:
    session.execute(update(WorkerRecord).where(WorkerRecord.name == name).values(last_seen=utcnow(), **fields))


def set_worker_job(session: Session, name: str, job_id: int | None) -> None:
    session.execute(update(WorkerRecord).where(WorkerRecord.name == name).values(current_job_id=job_id))


def list_workers(session: Session) -> list[WorkerRecord]:
    return list(session.scalars(select(WorkerRecord).order_by(WorkerRecord.name)))


def live_workers(session: Session, seen_after: dt.datetime, queue: str | None = None) -> list[WorkerRecord]:
    """Workers that reported in after ``seen_after`` and, if given, consume ``queue``."""
    workers = session.scalars(
        select(WorkerRecord).where(WorkerRecord.status == "online", WorkerRecord.last_seen >= seen_after)
    )
    return [w for w in workers if queue is None or queue in w.queues.split(",")]
