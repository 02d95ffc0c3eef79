"""The reads behind `tlq ui`: a page of jobs under every filter at once, the headline value of many jobs in one
query, metric histories thinned in SQL, children of a job, and how many jobs wait on each queue.

Each is one or two statements whatever the number of jobs or metric rows, so a page stays fast on a database of
10,000 jobs and 1,000,000 metric rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from tlq.db.filters import FieldResolver, compile_where, final_metric
from tlq.db.models import Job, JobStatus, Metric
from tlq.db.results import metric_names, tag_conditions


def jobs_page(
    session: Session,
    status: str | None = None,
    task: str | None = None,
    backbone: str | None = None,
    tags: dict[str, str] | None = None,
    group: int | None = None,
    where: str | None = None,
    offset: int = 0,
    limit: int = 50,
) -> tuple[list[Job], int]:
    """One page of jobs, newest first, matching every filter given (``where`` in the `--where` language).

    Returns:
        The page's jobs and how many jobs match in all.

    Raises:
        FilterError: ``where`` is malformed; the message points at the spot, as `tlq results` prints it.
    """
    dialect = session.get_bind().dialect.name
    conditions = list(tag_conditions(tags or {}, dialect))
    if where and where.strip():
        conditions.append(compile_where(where, FieldResolver(dialect, metric_names(session))))
    for column, value in ((Job.status, status), (Job.task, task), (Job.backbone, backbone), (Job.group_id, group)):
        if value not in (None, ""):
            conditions.append(column == value)
    total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
    query = select(Job).where(*conditions).order_by(Job.id.desc()).offset(offset).limit(limit)
    return list(session.scalars(query)), total


def final_values(session: Session, job_ids: list[int], name: str) -> dict[int, float]:
    """The value each of the jobs has for metric ``name`` at its last step; jobs without it are left out."""
    if not job_ids:
        return {}
    value = final_metric(name).label("value")
    rows = session.execute(select(Job.id, value).where(Job.id.in_(job_ids)))
    return {job_id: v for job_id, v in rows if v is not None}


def children_of(session: Session, job_id: int) -> list[int]:
    """The jobs retried from ``job_id`` (their ``parent_id``), oldest first."""
    return list(session.scalars(select(Job.id).where(Job.parent_id == job_id).order_by(Job.id)))


def queue_depths(session: Session) -> list[dict[str, Any]]:
    """Per queue, how many jobs wait (queued) and how many run; queues with neither are left out."""
    counted = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
    rows = session.execute(
        select(Job.queue, Job.status, func.count()).where(Job.status.in_(counted)).group_by(Job.queue, Job.status)
    )
    depths: dict[str, dict[str, Any]] = {}
    for queue, status, count in rows:
        depths.setdefault(queue, {"queue": queue, "queued": 0, "running": 0})[status] = count
    return [depths[q] for q in sorted(depths)]


def metric_series(
    session: Session, job_ids: list[int], max_points: int, names: list[str] | None = None
) -> dict[int, dict[str, dict[str, Any]]]:
    """Each job's metric histories, thinned in SQL to at most ``max_points`` points per metric.

    A history of ``n`` rows keeps every ``s``-th row, ``s = ceil((n - 1) / (max_points - 1))``, from the first,
    and always the last: at most ``max_points`` rows, the first and last among them.

    Returns:
        ``{job id: {metric name: {"steps": [...], "values": [...], "points": rows in the database}}}``.
    """
    if not job_ids:
        return {}
    max_points = max(2, max_points)
    window = {"partition_by": (Metric.job_id, Metric.name)}
    conditions = [Metric.job_id.in_(job_ids)]
    if names:
        conditions.append(Metric.name.in_(names))
    ranked = (
        select(
            Metric.job_id,
            Metric.name,
            Metric.step,
            Metric.value,
            func.row_number().over(**window, order_by=(Metric.step, Metric.id)).label("rank"),
            func.count().over(**window).label("rows"),
        )
        .where(*conditions)
        .subquery()
    )
    # ceil((rows - 1) / (max_points - 1)) in integer arithmetic, which both SQLite and PostgreSQL do for integers
    stride = func.max((ranked.c.rows - 1 + max_points - 2) / (max_points - 1), 1)
    if session.get_bind().dialect.name == "postgresql":
        stride = func.greatest((ranked.c.rows - 1 + max_points - 2) / (max_points - 1), 1)
    kept = select(ranked).where(or_((ranked.c.rank - 1) % stride == 0, ranked.c.rank == ranked.c.rows))
    series: dict[int, dict[str, dict[str, Any]]] = {job_id: {} for job_id in job_ids}
    for job_id, name, step, value, _rank, rows in session.execute(
        kept.order_by(ranked.c.job_id, ranked.c.name, ranked.c.rank)
    ):
        found = series[job_id].setdefault(name, {"steps": [], "values": [], "points": rows})
        found["steps"].append(step)
        found["values"].append(value)
    return series
