"""The queries the CLI and the workers run: jobs through their life, metrics, artifacts and workers.

A running job's state changes (claims, leases, recovery, sends) live in ``tlq.db.claims``.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sqlalchemy import Table, and_, func, select, update
from sqlalchemy.orm import Session, aliased

from tlq.db.clock import db_now
from tlq.db.models import Artifact, Attempt, Job, JobStatus, Metric, WorkerRecord, utcnow

WORKER_LIVE_WINDOW_S = 30.0  # a worker that reported in this recently counts as live


def _insert_for(session: Session):
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


def _upsert(session: Session, table: Table, rows: list[dict[str, Any]], keys: Iterable[str]) -> None:
    """Inserts ``rows`` (all with the same columns); a row whose ``keys`` exist replaces it. One statement per
    table, dialect and shape, executed with the rows as its parameters (SQLAlchemy sends them as one INSERT):
    building a multi-row VALUES per call cost twice the CPU of the write itself."""
    columns = tuple(rows[0])
    stmt = _upsert_statement(_insert_for(session), table, tuple(keys), columns)
    session.connection().execute(stmt, rows)


@functools.lru_cache(maxsize=64)
def _upsert_statement(insert, table: Table, keys: tuple[str, ...], columns: tuple[str, ...]):
    stmt = insert(table)
    return stmt.on_conflict_do_update(index_elements=keys, set_={k: stmt.excluded[k] for k in columns if k not in keys})


# --- jobs -----------------------------------------------------------------------------------------------------


def create_job(session: Session, **fields: Any) -> Job:
    """Inserts a queued job and returns it with its id; the caller holds its send (see ``claims``)."""
    fields.setdefault("sending_since", db_now())
    job = Job(status=JobStatus.QUEUED.value, **fields)
    session.add(job)
    session.flush()
    return job


def insert_job(session: Session, **fields: Any) -> int:
    """``create_job`` without building the ORM object: one prepared INSERT, for submit's hot path.

    Returns:
        The new job's id.

    Raises:
        TypeError: A field is not a column the submit may set (as the ORM would for a field without a column).
    """
    wrong = set(fields) - _SUBMITTED_COLUMNS
    if wrong:
        raise TypeError(f"{', '.join(sorted(wrong))}: not a column a new job's row takes")
    return session.connection().execute(_INSERT_JOB, fields).scalar_one()


_SUBMITTED_COLUMNS = set(Job.__table__.c.keys()) - {"id", "status", "sending_since"}  # the INSERT sets those
_INSERT_JOB = (
    Job.__table__.insert().values(status=JobStatus.QUEUED.value, sending_since=db_now()).returning(Job.__table__.c.id)
)


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
    name: str | None = None,
) -> list[Job]:
    """Jobs, newest first, filtered by the given columns and tags; ``name`` matches any part of a job's name,
    in any case (``%`` and ``_`` in it are plain characters)."""
    from tlq.db.results import tag_conditions

    query = select(Job).order_by(Job.id.desc())
    if name:
        query = query.where(Job.name.icontains(name, autoescape=True))
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
    return dict(session.execute(select(Job.id, Job.status).where(Job.id.in_(job_ids))).all())


# --- metrics and artifacts ------------------------------------------------------------------------------------


def record_metric(session: Session, job_id: int, name: str, value: float, step: int = 0, epoch: int | None = None):
    """Stores a metric value; recording the same (name, step) again replaces it, so a resumed job never doubles."""
    record_metrics(session, job_id, {name: value}, step=step, epoch=epoch)


def record_metrics(
    session: Session, job_id: int, values: dict[str, float], step: int = 0, epoch: int | None = None
) -> None:
    """Stores several metric values at one step in one statement, each replacing any recorded at (name, step)."""
    if not values:
        return
    now = utcnow()
    rows = [
        dict(job_id=job_id, name=name, step=step, epoch=epoch, value=float(value), time=now)
        for name, value in values.items()
    ]
    _upsert(session, Metric.__table__, rows, keys=("job_id", "name", "step"))


def delete_metrics_after(session: Session, job_id: int, step: int) -> None:
    """Drops metrics recorded past ``step`` (by an attempt whose checkpoint was lost)."""
    session.execute(Metric.__table__.delete().where(and_(Metric.job_id == job_id, Metric.step > step)))


def metric_history(session: Session, job_id: int, name: str | None = None) -> list[Metric]:
    query = select(Metric).where(Metric.job_id == job_id).order_by(Metric.name, Metric.step)
    if name:
        query = query.where(Metric.name == name)
    return list(session.scalars(query))


def last_metrics(session: Session, job_id: int) -> dict[str, float]:
    """The latest value of each metric of a job (its row at the metric's last step), in the order the metrics
    first appear: one query, answering a row per metric rather than the job's whole history."""
    spans = (
        select(Metric.name, func.min(Metric.step).label("first"), func.max(Metric.step).label("last"))
        .where(Metric.job_id == job_id)
        .group_by(Metric.name)
        .subquery()
    )
    opening, latest = aliased(Metric), aliased(Metric)

    def at(row, step):
        return and_(row.job_id == job_id, row.name == spans.c.name, row.step == step)

    rows = session.execute(
        select(latest.name, latest.value)
        .join(spans, at(latest, spans.c.last))
        .join(opening, at(opening, spans.c.first))
        .order_by(spans.c.first, opening.id)
    )
    return {name: value for name, value in rows}


def record_artifact(session: Session, job_id: int, kind: str, path: str, size: int, sha256: str) -> None:
    _upsert(
        session,
        Artifact.__table__,
        [dict(job_id=job_id, kind=kind, path=path, bytes=size, sha256=sha256, created_at=utcnow())],
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
        "attempt_history": [
            {
                "attempt": a.number,
                "worker": a.worker,
                "hostname": a.hostname,
                "pid": a.pid,
                "claimed_at": iso(a.claimed_at),
                "ended_at": iso(a.ended_at),
                "outcome": a.outcome,
                "reason": a.reason,
            }
            for a in job_attempts(session, job.id)
        ],
    }


def job_attempts(session: Session, job_id: int) -> list[Attempt]:
    """Every claim of a job, first to last."""
    return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number, Attempt.id)))


# --- workers --------------------------------------------------------------------------------------------------


def register_worker(session: Session, name: str, instance: str, is_gone=None, **fields: Any) -> WorkerRecord | None:
    """Records a worker life as online under ``name``, unless a live worker holds that name.

    A record holds its name while it is online or stopping and reported in within ``WORKER_LIVE_WINDOW_S`` (by
    the database's clock), unless ``is_gone(record)`` says its process is known to have ended.

    Returns:
        None when registered, else the live record that holds the name.
    """
    values = dict(
        fields,
        name=name,
        instance=instance,
        status="online",
        started_at=db_now(),
        last_seen=db_now(),
    )
    # Insert first: of two workers registering a new name at once, exactly one inserts; the other then finds
    # the row (locked on PostgreSQL until the first commits) and sees it live.
    insert = _insert_for(session)
    inserted = insert(WorkerRecord).values(**values).on_conflict_do_nothing(index_elements=["name"])
    if session.execute(inserted.returning(WorkerRecord.id)).first() is not None:
        return None
    existing = session.scalar(select(WorkerRecord).where(WorkerRecord.name == name).with_for_update())
    if existing.status in ("online", "stopping"):
        live = session.scalar(select(existing.last_seen >= db_now(-WORKER_LIVE_WINDOW_S)))
        if live and not (is_gone is not None and is_gone(existing)):
            return existing
    session.execute(update(WorkerRecord).where(WorkerRecord.name == name).values(**values))
    return None


def touch_worker(session: Session, name: str, instance: str | None = None, **fields: Any) -> bool:
    """Refreshes a worker's report (only while ``instance`` still holds the name, when given)."""
    query = update(WorkerRecord).where(WorkerRecord.name == name)
    if instance is not None:
        query = query.where(WorkerRecord.instance == instance)
    return session.execute(query.values(last_seen=db_now(), **fields)).rowcount == 1


def running_jobs_of(session: Session, names: Iterable[str]) -> dict[str, list[int]]:
    """The running jobs of each named worker, oldest claim first (a worker's current jobs)."""
    rows = session.execute(
        select(Job.worker, Job.id)
        .where(Job.status == JobStatus.RUNNING.value, Job.worker.in_(list(names)))
        .order_by(Job.claimed_at, Job.id)
    )
    jobs: dict[str, list[int]] = {}
    for worker, job_id in rows:
        jobs.setdefault(worker, []).append(job_id)
    return jobs


def list_workers(session: Session) -> list[WorkerRecord]:
    return list(session.scalars(select(WorkerRecord).order_by(WorkerRecord.name)))


def live_workers(session: Session, queue: str | None = None) -> list[WorkerRecord]:
    """Workers that reported in within ``WORKER_LIVE_WINDOW_S`` and, if given, consume ``queue``."""
    workers = session.scalars(select(WorkerRecord).where(*_live()))
    return [w for w in workers if queue is None or queue in w.queues.split(",")]


def has_live_worker(session: Session, queue: str) -> bool:
    """Whether a live worker (as ``live_workers`` says) consumes ``queue``: their queue lists alone, the ORM left
    out, as submit asks it for every ``--device auto`` job (matched in Python, exactly as ``live_workers`` does:
    SQLite's LIKE ignores case)."""
    lists = session.scalars(select(WorkerRecord.queues).where(*_live()))
    return any(queue in (queues or "").split(",") for queues in lists)


def _live():
    """A worker record that is online and reported in within ``WORKER_LIVE_WINDOW_S`` (by the database's clock)."""
    return WorkerRecord.status == "online", WorkerRecord.last_seen >= db_now(-WORKER_LIVE_WINDOW_S)
