"""Reading results back: filtered job searches, leaderboards over a metric, and metric histories."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, aliased

from tlq.db.filters import FieldResolver, compile_order_by, compile_where, final_metric, job_epochs, json_value
from tlq.db.models import Job, JobGroup, Metric, utcnow

# Metrics where a lower value is the better one; every other metric is better higher.
LOWER_IS_BETTER = ("loss", "error", "seconds", "time", "tv", "l2", "linf", "perturbation")
# The metric a leaderboard ranks by when none is named: the first one the jobs have.
PRIMARY_METRICS = ("val_acc", "accuracy", "success_rate", "target_prob", "robust_acc", "images_per_second")


def metric_names(session: Session) -> set[str]:
    """Every metric name recorded in the database."""
    return set(session.scalars(select(Metric.name).distinct()))


def metric_names_of(session: Session, job_ids: list[int]) -> set[str]:
    """The metric names the given jobs recorded."""
    return set(session.scalars(select(Metric.name).where(Metric.job_id.in_(job_ids)).distinct()))


def lower_is_better(metric: str) -> bool:
    """Whether smaller values of ``metric`` are better (losses, errors, times)."""
    name = metric.lower()
    return any(part in name for part in LOWER_IS_BETTER) and "acc" not in name


def tag_conditions(tags: dict[str, str], dialect: str) -> list:
    return [json_value(Job.tags, key, "str", dialect) == value for key, value in tags.items()]


def search_jobs(
    session: Session,
    where: str | None = None,
    order_by: str | None = None,
    tags: dict[str, str] | None = None,
    limit: int | None = 100,
) -> tuple[list[Job], list[str]]:
    """Jobs matching a `--where` filter, in `--order-by` order (newest first by default).

    Returns:
        The jobs and the metric names the filter and the order used, in the order they appear.

    Raises:
        FilterError: The filter or the order cannot be parsed, or names a field that does not exist.
    """
    dialect = session.get_bind().dialect.name
    resolver = FieldResolver(dialect, metric_names(session))
    query = select(Job)
    if where and where.strip():
        query = query.where(compile_where(where, resolver))
    for condition in tag_conditions(tags or {}, dialect):
        query = query.where(condition)
    if order_by and order_by.strip():
        query = query.order_by(*compile_order_by(order_by, resolver), Job.id.desc())
    else:
        query = query.order_by(Job.id.desc())
    if limit:
        query = query.limit(limit)
    return list(session.scalars(query)), resolver.used_metrics


def metric_history(session: Session, job_ids: list[int], name: str | None = None) -> list[Metric]:
    """Metric rows of the jobs, by job, name and step."""
    query = select(Metric).where(Metric.job_id.in_(job_ids)).order_by(Metric.job_id, Metric.name, Metric.step)
    if name:
        query = query.where(Metric.name == name)
    return list(session.scalars(query))


def get_group(session: Session, group_id: int) -> JobGroup | None:
    return session.get(JobGroup, group_id)


def group_jobs(session: Session, group_id: int) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.group_id == group_id).order_by(Job.id)))


def create_group(session: Session, name: str | None, spec: dict[str, Any]) -> int:
    group = JobGroup(name=name, spec=spec)
    session.add(group)
    session.flush()
    return group.id


def varying_params(jobs: list[Job]) -> list[str]:
    """The parameter names whose values differ between the jobs: what a sweep or a comparison varies."""
    return varying_params_of([job.params or {} for job in jobs])


def varying_params_of(params: list[dict[str, Any]]) -> list[str]:
    """The keys whose values differ between the parameter dicts, in first-seen order."""
    if len(params) < 2:
        return []
    keys: list[str] = []
    for p in params:
        keys += [k for k in p or {} if k not in keys]
    return [k for k in keys if len({repr((p or {}).get(k)) for p in params}) > 1]


def pick_metric(session: Session, job_ids: list[int], preferred: Sequence[str] = ()) -> str | None:
    """The metric to rank by when none is named: the first of ``preferred`` (the headline metrics the jobs'
    tasks declare), then of PRIMARY_METRICS, that the jobs have."""
    names = metric_names_of(session, job_ids)
    return next((m for m in (*preferred, *PRIMARY_METRICS) if m in names), None)


def tasks_of(session: Session, job_ids: list[int]) -> list[str]:
    """The tasks of the given jobs, most common first."""
    counts: dict[str, int] = defaultdict(int)
    for task in session.scalars(select(Job.task).where(Job.id.in_(job_ids))):
        counts[task] += 1
    return sorted(counts, key=lambda task: (-counts[task], task))


@dataclass
class LeaderboardRow:
    job: int
    backbone: str | None
    params: dict[str, Any]
    best: float | None
    final: float | None
    epochs: int | None
    seconds: float | None
    status: str
    rank: int = 0
    best_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _seconds(job: Job) -> float | None:
    if job.started_at is None:
        return None
    end = job.finished_at or utcnow()
    return round((end - job.started_at).total_seconds(), 3)


def _metric_summary(session: Session, ids: list[int], metric: str) -> dict[int, tuple]:
    """(highest, lowest, final value of ``metric``, last epoch) for each of the jobs, in one query of correlated
    subqueries (``final_metric`` and ``job_epochs``, as the ``--where`` language has them): no job's history is
    loaded. A job without the metric has None for its three values."""
    recorded = aliased(Metric)

    def over(aggregate) -> ColumnElement:
        where = (recorded.job_id == Job.id, recorded.name == metric)
        return select(aggregate(recorded.value)).where(*where).correlate(Job).scalar_subquery()

    rows = session.execute(
        select(Job.id, over(func.max), over(func.min), final_metric(metric), job_epochs()).where(Job.id.in_(ids))
    )
    return {job_id: tuple(values) for job_id, *values in rows}


def leaderboard(session: Session, jobs: list[Job], metric: str, goal: str | None = None) -> list[LeaderboardRow]:
    """The jobs ranked by the best value of ``metric``, best first; jobs without it come last.

    Args:
        goal: ``max`` or ``min``; by default ``min`` for losses, errors and times, else ``max``.
    """
    goal = goal or ("min" if lower_is_better(metric) else "max")
    ids = [job.id for job in jobs]
    summary = _metric_summary(session, ids, metric)
    swept = varying_params(jobs)
    rows = []
    for job in jobs:
        highest, lowest, final, epochs = summary.get(job.id, (None, None, None, None))
        rows.append(
            LeaderboardRow(
                job=job.id,
                backbone=job.backbone,
                params={k: (job.params or {}).get(k) for k in swept},
                best=highest if goal == "max" else lowest,
                final=final,
                epochs=epochs,
                seconds=_seconds(job),
                status=job.status,
            )
        )
    sign = -1 if goal == "max" else 1
    rows.sort(key=lambda r: (r.best is None, sign * (r.best or 0.0), sign * (r.final or 0.0), r.job))
    for rank, row in enumerate(rows, start=1):
        row.rank = rank
    if rows and rows[0].best is not None:
        rows[0].best_run = True
    return rows
