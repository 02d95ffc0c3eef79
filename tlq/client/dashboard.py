"""What `tlq ui` reads through a ``Client``: a page of jobs with their headline values, a job with its lineage,
metric histories thinned on the database side and how a job page lays them out (charts, single values), queue
depths, and a job's artifacts with their web paths.

Plain functions over a ``Client``: they use its settings, database and task registry, and return plain dicts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tlq.client.api import Client
from tlq.client.headlines import headline_metrics
from tlq.errors import BadInput

MAX_ID = 2**31 - 1  # the largest job or group id: their columns are INTEGER, 32 bits on PostgreSQL


def check_ids(jobs: Iterable[int] = (), group: int | None = None) -> None:
    """Refuses as unknown an id that no job or group can have (above ``MAX_ID``), which the database would fail
    on (SQLite past 64 bits, PostgreSQL past 32) rather than find nothing.

    Raises:
        BadInput: The client's message for an unknown job or group.
    """
    if group is not None and not 0 <= group <= MAX_ID:
        raise BadInput(f"there is no group {group}; `tlq sweep` prints the group of the jobs it queues")
    for job_id in jobs:
        if not 0 <= job_id <= MAX_ID:
            raise BadInput(f"there is no job {job_id}; `tlq jobs` lists the jobs")


def _iso(value) -> str | None:
    return value.isoformat() if value else None


def job_row(job, headline: str | None, value: float | None) -> dict[str, Any]:
    """A job as one row of the jobs page: what the table shows, no metric history nor artifacts."""
    return {
        "id": job.id,
        "task": job.task,
        "backbone": job.backbone,
        "name": job.name,
        "tags": job.tags or {},
        "status": job.status,
        "queue": job.queue,
        "group_id": job.group_id,
        "progress": {"current": job.progress_current, "total": job.progress_total, "stage": job.progress_stage},
        "headline": {"name": headline, "value": value},
        "worker": job.worker,
        "error": job.error,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
    }


def jobs_page(
    client: Client,
    status: str | None = None,
    task: str | None = None,
    backbone: str | None = None,
    tags: dict[str, str] | None = None,
    group: int | None = None,
    where: str | None = None,
    page: int = 1,
    per_page: int = 50,
) -> dict[str, Any]:
    """A page of jobs, newest first, under every filter given; each with its task's headline metric and value.

    Returns:
        ``{"jobs": [rows], "page", "per_page", "total"}``.

    Raises:
        FilterError: ``where`` is malformed (the message is the one `tlq results --where` prints).
    """
    from tlq.db import dashboard

    headlines = headline_metrics(client.env.tasks)
    with client.env.db.read_session() as session:
        jobs, total = dashboard.jobs_page(
            session, status, task, backbone, tags, group, where, offset=(page - 1) * per_page, limit=per_page
        )
        values: dict[int, float] = {}
        for name in {headlines[job.task][0] for job in jobs if job.task in headlines}:
            ids = [job.id for job in jobs if headlines.get(job.task, ("",))[0] == name]
            values.update(dashboard.final_values(session, ids, name))
    rows = []
    for job in jobs:
        name = headlines[job.task][0] if job.task in headlines else None
        rows.append(job_row(job, name, values.get(job.id)))
    return {"jobs": rows, "page": page, "per_page": per_page, "total": total}


def job_detail(client: Client, job_id: int) -> dict[str, Any]:
    """The job as `tlq show --json` prints it (``attempts`` the number of claims, ``attempt_history`` each one:
    worker, host, times, outcome), with the ids of the jobs retried from it (``children``).

    One read: the job's row, its attempts, artifacts and children, and the latest value of each metric (one
    query; never the metric histories, which ``metric_series`` reads thinned).

    Raises:
        BadInput: There is no job ``job_id``.
    """
    from tlq.db import dashboard, queries

    check_ids([job_id])
    with client.env.db.read_session() as session:
        job = queries.get_job(session, job_id)
        if job is None:
            raise BadInput(f"there is no job {job_id}; `tlq jobs` lists the jobs")
        detail = queries.job_as_dict(session, job, client.settings.artifacts_dir)
        detail["children"] = dashboard.children_of(session, job_id)
    return detail


def metric_series(client: Client, job_ids: list[int], max_points: int = 1000) -> dict[int, dict[str, Any]]:
    """The jobs' metric histories, each thinned to at most ``max_points`` points: per bucket of steps the points
    holding its smallest and largest value (so spikes stay), the first and last always.

    Returns:
        ``{job id: {name: {"steps", "values", "points": rows in the database}}}``.
    """
    from tlq.db import dashboard

    with client.env.db.read_session() as session:
        return dashboard.metric_series(session, job_ids, max_points)


def shared_scale(name: str) -> str:
    """What a metric shares a chart by: its name after the first underscore (``acc`` for ``train_acc`` and
    ``val_acc``, ``loss`` for ``train_loss`` and ``val_loss``), or the whole name when it has none (so ``loss``
    joins ``val_loss``)."""
    return name.split("_", 1)[1] if "_" in name else name


def metric_counts(client: Client, job_id: int) -> dict[str, int]:
    """How many rows each of the job's metrics has, by name (counted in the database, no history read)."""
    from tlq.db import dashboard

    with client.env.db.read_session() as session:
        return dashboard.metric_counts(session, job_id)


def metric_layout(points: dict[str, int]) -> dict[str, list]:
    """How a job page shows its metrics, from how many rows each has: ``scalars``, the names of those recorded
    once (a count, a best value), by name; ``charts``, the others, as lists of names drawn together, those that
    share a scale (``shared_scale``) on one chart: the charts of several curves first, then by name.

    Returns:
        ``{"scalars": [name, ...], "charts": [[name, ...], ...]}``.
    """
    scalars = sorted(name for name, rows in points.items() if rows < 2)
    groups: dict[str, list[str]] = {}
    for name in sorted(name for name, rows in points.items() if rows >= 2):
        groups.setdefault(shared_scale(name), []).append(name)
    charts = sorted(groups.values(), key=lambda names: (-len(names), names[0]))
    return {"scalars": scalars, "charts": charts}


def queue_depths(client: Client) -> list[dict[str, Any]]:
    """``[{"queue", "queued", "running"}]``: jobs waiting and running per queue, from the job database."""
    from tlq.db import dashboard

    with client.env.db.read_session() as session:
        return dashboard.queue_depths(session)


def web_artifacts(client: Client, job_id: int) -> list[dict[str, Any]]:
    """A job's artifacts as the dashboard lists them: ``name`` (the path inside the job's folder), ``kind``,
    ``bytes``, ``sha256`` and ``url`` (``/artifacts/ID/NAME``, the name percent-encoded: it may hold ``#``, ``?``
    or ``%``).

    Raises:
        BadInput: There is no job ``job_id``.
    """
    from urllib.parse import quote

    check_ids([job_id])
    prefix = f"{job_id}/"
    listed = []
    for artifact in client.artifacts(job_id):
        relative = artifact["relative"]
        if not relative.startswith(prefix):
            continue  # a job writes only inside its own folder; a row that says otherwise is not served
        name = relative[len(prefix) :]
        listed.append(
            {
                "name": name,
                "kind": artifact["kind"],
                "bytes": artifact["bytes"],
                "sha256": artifact["sha256"],
                "url": f"/artifacts/{job_id}/{quote(name)}",
            }
        )
    return listed


def job_exists(client: Client, job_id: int) -> bool:
    """Whether there is a job ``job_id``."""
    try:
        check_ids([job_id])
        client.jobs_of(jobs=[job_id])
    except BadInput:
        return False
    return True
