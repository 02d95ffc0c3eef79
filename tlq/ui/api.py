"""The dashboard's JSON API under ``/api/`` (what the pages poll) and the artifact files under ``/artifacts/``.

Every read goes through ``tlq.client``; a bad filter or parameter answers 400 with the one-line message the CLI
prints, an unknown job 404. The README's "Dashboard" section lists the routes.
"""

from __future__ import annotations

import mimetypes
from pathlib import PurePosixPath
from typing import Any

from starlette.convertors import Convertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from tlq.client import dashboard
from tlq.errors import BadInput
from tlq.ui.security import artifact_file

LOG_NAME = "job.log"
LOG_TAIL_BYTES = 256 * 1024
# Shown inline (in <img> or as text); every other file is sent as a download.
INLINE_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".svg": "image/svg+xml",
    ".csv": "text/plain; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".log": "text/plain; charset=utf-8",
    ".json": "text/plain; charset=utf-8",
    ".md": "text/plain; charset=utf-8",
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".svg")


class HTTPProblem(Exception):
    """An answer other than 200, with a one-line message for the user."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def client_of(request: Request):
    return request.app.state.client


def int_param(
    request: Request, name: str, default: int | None, low: int = 1, high: int = dashboard.MAX_ID
) -> int | None:
    """Query parameter ``name`` as a whole number in [low, high] (by default no larger than an id can be, which
    the database could not even compare); HTTPProblem 400 otherwise."""
    raw = request.query_params.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPProblem(400, f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise HTTPProblem(400, f"{name}={value} is out of range; give a number from {low} to {high}")
    return value


def parse_tags(request: Request) -> dict[str, str]:
    """Every ``tag=KEY=VALUE`` of the query string as a dict, as `tlq jobs --tag` reads them."""
    tags = {}
    for text in request.query_params.getlist("tag"):
        if not text.strip():
            continue
        key, sep, value = text.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--tag {text!r} is not KEY=VALUE; write it as --tag dataset=pets")
        tags[key.strip()] = value.strip()
    return tags


def job_filters(request: Request) -> dict[str, Any]:
    """The jobs page's filters from the query string, as ``dashboard.jobs_page`` takes them."""
    q = request.query_params
    return {
        "status": q.get("status") or None,
        "task": q.get("task") or None,
        "backbone": q.get("backbone") or None,
        "tags": parse_tags(request),
        "group": int_param(request, "group", None),
        "where": q.get("where") or None,
        "page": int_param(request, "page", 1),
        "per_page": int_param(request, "per_page", 50, high=500),
    }


def job_id_of(request: Request) -> int:
    """The ``{job_id}`` of the route, checked to exist (HTTPProblem 404 otherwise)."""
    job_id = request.path_params["job_id"]
    if not dashboard.job_exists(client_of(request), job_id):
        raise HTTPProblem(404, f"there is no job {job_id}; `tlq jobs` lists the jobs")
    return job_id


def answer(handler):
    """Runs ``handler(request)``; its dict or list becomes JSON, a known error a JSON error with its status."""
    from tlq.db.filters import FilterError

    def endpoint(request: Request) -> Response:
        try:
            result = handler(request)
        except HTTPProblem as exc:
            return error(exc.status, str(exc))
        except (FilterError, BadInput) as exc:
            return error(400, str(exc))
        return result if isinstance(result, Response) else JSONResponse(result)

    endpoint.__name__ = handler.__name__
    endpoint.__doc__ = handler.__doc__
    return endpoint


# --- reads ----------------------------------------------------------------------------------------------------


@answer
def jobs(request: Request):
    """A page of jobs, newest first: ``{"jobs", "page", "per_page", "total"}``."""
    return dashboard.jobs_page(client_of(request), **job_filters(request))


@answer
def job(request: Request):
    """The job as `tlq show --json` prints it, plus ``children``."""
    job_id = request.path_params["job_id"]
    try:
        return dashboard.job_detail(client_of(request), job_id)
    except BadInput as exc:
        raise HTTPProblem(404, str(exc)) from exc


@answer
def metrics(request: Request):
    """``{"metrics": {name: {"steps", "values", "points"}}, "scalars": [name], "charts": [[name]]}``: at most
    ``max_points`` points per metric, and how the job page shows them (``dashboard.metric_layout``)."""
    job_id = job_id_of(request)
    max_points = int_param(request, "max_points", 1000, low=2, high=100_000)
    series = dashboard.metric_series(client_of(request), [job_id], max_points)[job_id]
    return {"metrics": series, **dashboard.metric_layout({name: s["points"] for name, s in series.items()})}


@answer
def artifacts(request: Request):
    """The job's files: ``[{"name", "kind", "bytes", "sha256", "url"}]``."""
    return dashboard.web_artifacts(client_of(request), job_id_of(request))


def read_log(client, job_id: int, names: list[str] | None = None) -> dict[str, Any]:
    """The tail of the job's captured log (the ``job.log`` artifact): ``{"log": text or None, "truncated"}``.
    ``names``: the job's artifacts (``web_artifacts``' names), when the caller has read them already."""
    if names is None:
        names = [a["name"] for a in dashboard.web_artifacts(client, job_id)]
    path = artifact_file(client.settings.artifacts_dir, job_id, LOG_NAME, names) if LOG_NAME in names else None
    if path is None:
        return {"log": None, "truncated": False}
    size = path.stat().st_size
    with path.open("rb") as fh:
        fh.seek(max(0, size - LOG_TAIL_BYTES))
        text = fh.read().decode("utf-8", errors="replace")
    return {"log": text, "truncated": size > LOG_TAIL_BYTES}


@answer
def log(request: Request):
    """The tail of the job's log: ``{"log": text or null, "truncated"}``."""
    return read_log(client_of(request), job_id_of(request))


def compare_rows(request: Request) -> list[dict[str, Any]]:
    """The leaderboard of ``?group=ID`` or ``?jobs=1,2,3``, best first, as `tlq compare --json` prints it."""
    group = int_param(request, "group", None)
    raw = request.query_params.get("jobs", "")
    try:
        ids = [int(part) for part in raw.split(",") if part.strip()]
    except ValueError:
        raise HTTPProblem(400, f"jobs={raw!r} is not a comma-separated list of job ids") from None
    if (group is None) == (not ids):
        raise HTTPProblem(400, "give either group=ID or jobs=1,2,3")
    goal = request.query_params.get("goal") or None
    if goal not in (None, "max", "min"):
        raise HTTPProblem(400, f"goal={goal!r} is neither max nor min")
    metric = request.query_params.get("metric") or None
    dashboard.check_ids(ids, group)
    return client_of(request).compare(group=group, jobs=ids, metric=metric, goal=goal)


@answer
def compare(request: Request):
    """A leaderboard, best first, as `tlq compare --json`."""
    return compare_rows(request)


@answer
def results(request: Request):
    """Jobs matching ``where`` in ``order_by`` order, as `tlq results --json`."""
    client = client_of(request)
    q = request.query_params
    found, _ = client.search(q.get("where"), q.get("order_by"), parse_tags(request), int_param(request, "limit", 100))
    return client.add_waiting(found)


@answer
def workers(request: Request):
    """``{"workers": as `tlq workers --json`, "queues": [{"queue", "queued", "running"}]}``."""
    client = client_of(request)
    show_all = request.query_params.get("all", "") not in ("", "0", "false")
    return {"workers": client.workers(show_all), "queues": dashboard.queue_depths(client)}


# --- writes ---------------------------------------------------------------------------------------------------


@answer
def cancel(request: Request):
    """Cancels the job: ``{"status": "cancelled" | "requested" | its final status}``."""
    return {"status": client_of(request).cancel(job_id_of(request))}


@answer
def retry(request: Request):
    """Queues a new job with the same spec: ``{"id": new id}``."""
    from tlq.jobs.submit import BrokerUnavailable

    try:
        return {"id": client_of(request).retry(job_id_of(request))}
    except BrokerUnavailable as exc:
        raise HTTPProblem(503, str(exc)) from exc


# --- files ----------------------------------------------------------------------------------------------------


def artifact(request: Request) -> Response:
    """A file the job recorded, from inside its own folder; 404 for anything else."""
    from starlette.responses import PlainTextResponse

    client = client_of(request)
    job_id, name = request.path_params["job_id"], request.path_params["path"]
    missing = PlainTextResponse("404: no such artifact\n", status_code=404)
    try:
        recorded = [a["name"] for a in dashboard.web_artifacts(client, job_id)]
    except BadInput:
        return missing
    path = artifact_file(client.settings.artifacts_dir, job_id, name, recorded)
    if path is None:
        return missing
    suffix = PurePosixPath(name).suffix.lower()
    filename = PurePosixPath(name).name
    inline = suffix in INLINE_TYPES and request.query_params.get("download") is None
    media_type = INLINE_TYPES.get(suffix) or mimetypes.guess_type(filename)[0] or "application/octet-stream"
    if not inline:
        media_type = "application/octet-stream"
    return FileResponse(
        path, media_type=media_type, filename=filename, content_disposition_type="inline" if inline else "attachment"
    )


class AnyPath(Convertor):
    """A path of any characters, newlines too (Starlette's ``path`` stops at one): a job names its artifacts."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("anypath", AnyPath())

routes = [
    Route("/api/jobs", jobs),
    Route("/api/jobs/{job_id:int}", job),
    Route("/api/jobs/{job_id:int}/metrics", metrics),
    Route("/api/jobs/{job_id:int}/artifacts", artifacts),
    Route("/api/jobs/{job_id:int}/log", log),
    Route("/api/jobs/{job_id:int}/cancel", cancel, methods=["POST"]),
    Route("/api/jobs/{job_id:int}/retry", retry, methods=["POST"]),
    Route("/api/compare", compare),
    Route("/api/results", results),
    Route("/api/workers", workers),
    Route("/artifacts/{job_id:int}/{path:anypath}", artifact),
]
