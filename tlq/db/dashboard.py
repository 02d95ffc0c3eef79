"""The reads behind `tlq ui`: a page of jobs under every filter at once, the headline value of many jobs in one
query, metric histories thinned in SQL (spikes kept) and their row counts, children of a job, and how many jobs
wait on each queue.

Each is one or two statements whatever the number of jobs or metric rows, so a page stays fast on a database of
10,000 jobs and 1,000,000 metric rows.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, and_, cast, func, literal, or_, select
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


def metric_counts(session: Session, job_id: int) -> dict[str, int]:
    """How many rows each metric of the job has, by name (an index-only count, no values read)."""
    query = select(Metric.name, func.count()).where(Metric.job_id == job_id).group_by(Metric.name).order_by(Metric.name)
    return {name: rows for name, rows in session.execute(query)}


def metric_series(
    session: Session, job_ids: list[int], max_points: int, names: list[str] | None = None
) -> dict[int, dict[str, dict[str, Any]]]:
    """Each job's metric histories, thinned in SQL to at most ``max_points`` points per metric, spikes kept.

    A history of at most ``max_points`` rows is kept whole. A longer one has its steps, first to last, cut into
    ``b = (max_points - 2) // 2`` buckets of equal width, and keeps of each bucket the row holding its smallest
    value and the row holding its largest (the earliest of equal smallest, the latest of equal largest), and the
    first row and the last: at most ``2 b + 2 <= max_points`` rows, in step order, so a spike between two rows
    an even thinning would keep is never lost. One statement: a count per history, then one window over the
    rows, sorted by bucket and value.

    Returns:
        ``{job id: {metric name: {"steps": [...], "values": [...], "points": rows in the database}}}``.
    """
    if not job_ids:
        return {}
    max_points = max(2, max_points)
    buckets = (max_points - 2) // 2
    history = (Metric.job_id, Metric.name)
    conditions = [Metric.job_id.in_(job_ids)]
    if names:
        conditions.append(Metric.name.in_(names))
    spans = (
        select(
            *history,
            func.min(Metric.step).label("first"),
            func.max(Metric.step).label("last"),
            (func.max(Metric.step) - func.min(Metric.step) + 1).label("width"),
            func.count().label("rows"),
        )
        .where(*conditions)
        .group_by(*history)
        .subquery()
    )
    columns = [Metric.job_id, Metric.name, Metric.step, Metric.value, spans.c.rows, spans.c.first, spans.c.last]
    if buckets:
        # The bucket of a step, 0 to buckets - 1, in integer arithmetic (as both SQLite and PostgreSQL divide
        # integers; 64-bit, so long histories cannot overflow); then each row's place by value inside its bucket,
        # and the bucket's size, over one sort. The expression holds no bound parameter: SQLite then sees both
        # windows' partitions as one (a parameter in them costs a third more time).
        offset = cast(Metric.step - spans.c.first, BigInteger)
        bucket = offset * literal(buckets, literal_execute=True) // spans.c.width
        in_bucket = {"partition_by": (Metric.job_id, Metric.name, bucket), "order_by": (Metric.value, Metric.step)}
        columns += [
            func.row_number().over(**in_bucket).label("low"),
            func.count().over(**in_bucket, rows=(None, None)).label("size"),
        ]
    joined = and_(Metric.job_id == spans.c.job_id, Metric.name == spans.c.name)
    placed = select(*columns).join(spans, joined).where(*conditions).subquery()
    keep = [placed.c.rows <= max_points, placed.c.step == placed.c.first, placed.c.step == placed.c.last]
    if buckets:
        keep += [placed.c.low == 1, placed.c.low == placed.c.size]
    kept = (
        select(placed.c.job_id, placed.c.name, placed.c.step, placed.c.value, placed.c.rows)
        .where(or_(*keep))
        .order_by(placed.c.job_id, placed.c.name, placed.c.step)
    )
    series: dict[int, dict[str, dict[str, Any]]] = {job_id: {} for job_id in job_ids}
    for job_id, name, step, value, rows in session.execute(kept):
        found = series[job_id].setdefault(name, {"steps": [], "values": [], "points": rows})
        found["steps"].append(step)
        found["values"].append(value)
    return series
