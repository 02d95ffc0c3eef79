"""The dashboard's HTML pages: jobs, one job, a group or a comparison, workers; and the login that sets the
token cookie. Each is rendered whole on the server; its script then polls the API for what changes."""

from __future__ import annotations

import csv
import io
from pathlib import PurePosixPath
from typing import Any

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from tlq.client import FINAL, dashboard
from tlq.errors import BadInput
from tlq.ui.api import IMAGE_SUFFIXES, HTTPProblem, client_of, job_filters, read_log
from tlq.ui.security import CSRF_COOKIE, csrf_cookie_header, new_csrf_token, same_token, token_cookie_header

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
MAX_POINTS = 1000
PREVIEW_ROWS = 20
PREVIEW_BYTES = 64 * 1024
MAX_PREVIEWS = 12


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> Response:
    """The page, with a fresh CSRF cookie when the browser has none (the page's script echoes it on writes)."""
    context.setdefault("error", None)
    response = request.app.state.templates.TemplateResponse(request, template, context, status_code=status)
    if not request.cookies.get(CSRF_COOKIE):
        response.headers.append("set-cookie", csrf_cookie_header(new_csrf_token()))
    return response


def problem_page(request: Request, status: int, message: str) -> Response:
    return render(request, "problem.html", {"status": status, "error": message}, status)


# --- jobs -----------------------------------------------------------------------------------------------------


def jobs_page(request: Request) -> Response:
    """``/``: the jobs, newest first, with the filters of the query string."""
    from tlq.db.filters import FilterError

    client = client_of(request)
    q = request.query_params
    form = {key: q.get(key, "") for key in ("status", "task", "backbone", "tag", "group", "where")}
    tasks = sorted(set(client.env.tasks.names()) | ({form["task"]} if form["task"] else set()))
    context: dict[str, Any] = {"form": form, "statuses": STATUSES, "tasks": tasks}
    context["data"] = {"jobs": [], "page": 1, "per_page": 50, "total": 0}
    try:
        context["data"] = data = dashboard.jobs_page(client, **job_filters(request))
    except (HTTPProblem, FilterError, BadInput) as exc:
        context["pages"] = {"prev": page_url(form, 1), "next": page_url(form, 1)}
        return render(request, "jobs.html", {**context, "error": str(exc)}, 400)
    last = max(1, -(-data["total"] // data["per_page"]))
    context["pages"] = {
        "prev": page_url(form, max(1, data["page"] - 1)),
        "next": page_url(form, min(last, data["page"] + 1)),
    }
    return render(request, "jobs.html", context)


def page_url(form: dict[str, str], page: int) -> str:
    """The jobs page's URL with the same filters, on ``page``."""
    from urllib.parse import urlencode

    return "/?" + urlencode({**{k: v for k, v in form.items() if v}, "page": page})


# --- one job --------------------------------------------------------------------------------------------------


def csv_preview(path, rows: int = PREVIEW_ROWS) -> tuple[list[str], list[list[str]]]:
    """The header and the first ``rows`` rows of a CSV file, read from its first 64 KB."""
    with path.open("rb") as fh:
        text = fh.read(PREVIEW_BYTES).decode("utf-8", errors="replace")
    lines = list(csv.reader(io.StringIO(text)))
    if len(text) == PREVIEW_BYTES and lines:
        lines.pop()  # the last line may be cut short
    return (lines[0] if lines else []), lines[1 : rows + 1]


def job_page(request: Request) -> Response:
    """``/jobs/ID``: parameters, lineage, attempts, error, metrics (single values in a table, histories as charts,
    those that share a scale together), artifacts and log of one job."""
    from tlq.ui.security import artifact_file

    client = client_of(request)
    job_id = request.path_params["job_id"]
    try:
        job = dashboard.job_detail(client, job_id)
    except BadInput:
        return problem_page(request, 404, f"there is no job {job_id}; the jobs page lists them")
    files = dashboard.web_artifacts(client, job_id)
    names = [f["name"] for f in files]
    images = [f for f in files if PurePosixPath(f["name"]).suffix.lower() in IMAGE_SUFFIXES]
    previews = []
    for f in files:
        if PurePosixPath(f["name"]).suffix.lower() == ".csv" and len(previews) < MAX_PREVIEWS:
            path = artifact_file(client.settings.artifacts_dir, job_id, f["name"], names)
            if path is not None:
                header, rows = csv_preview(path)
                previews.append({"name": f["name"], "url": f["url"], "header": header, "rows": rows})
    # No history here: the rows each metric has, and its latest value (in ``job``), lay the section out; the
    # page's script then draws the charts from /api/jobs/ID/metrics, thinned.
    counts = dashboard.metric_counts(client, job_id)
    layout = dashboard.metric_layout(counts)
    context = {
        "job": job,
        "final": job["status"] in FINAL,
        "scalars": [{"name": name, "value": job["metrics"].get(name)} for name in layout["scalars"]],
        "charts": [
            {
                "metric": ",".join(group),
                "title": ", ".join(group),
                "points": ",".join("0" for _ in group),  # none drawn yet
                "rows": ",".join(str(counts[name]) for name in group),
            }
            for group in layout["charts"]
        ],
        "max_points": MAX_POINTS,
        "files": files,
        "images": images,
        "previews": previews,
        "log": read_log(client, job_id, names),
    }
    return render(request, "job.html", context)


# --- groups and comparisons -----------------------------------------------------------------------------------


def comparison(request: Request, group: int | None, ids: list[int]) -> Response:
    """The leaderboard of the jobs, ranked as `tlq compare` ranks them, and their curves overlaid."""
    client = client_of(request)
    metric = request.query_params.get("metric") or None
    context: dict[str, Any] = {"group": group, "ids": ids, "rows": [], "params": [], "metric": metric}
    context.update(charts=[], goal=None, title=f"Group {group}" if group is not None else "Compare jobs")
    try:
        dashboard.check_ids(ids, group)
        ids = client.jobs_of(group, ids)
        context["ids"] = ids
        if not ids:
            raise BadInput(f"group {group} has no jobs")
        metric = context["metric"] = metric or client.default_metric(ids)
        rows = client.compare(jobs=ids, metric=metric)
    except BadInput as exc:
        status = 404 if str(exc).startswith("there is no") else 400
        return render(request, "compare.html", {**context, "error": str(exc)}, status)
    params: list[str] = []
    for row in rows:
        params += [key for key in row["params"] if key not in params]
    series = dashboard.metric_series(client, ids, MAX_POINTS)
    most: dict[str, int] = {}
    for per_job in series.values():
        for name, s in per_job.items():
            most[name] = max(most.get(name, 0), s["points"])
    names = sorted(most, key=lambda n: (n != metric, most[n] < 2, n))
    charts = [
        {"metric": name, "points": sum(len(series[i][name]["steps"]) for i in ids if name in series[i])}
        for name in names
    ]
    goal = "min" if client.lower_is_better(metric) else "max"
    context.update(rows=rows, params=params, charts=charts, goal=goal)
    return render(request, "compare.html", context)


def group_page(request: Request) -> Response:
    """``/groups/ID``: a sweep's leaderboard."""
    return comparison(request, request.path_params["group_id"], [])


def compare_page(request: Request) -> Response:
    """``/compare?jobs=1,2,3``: the leaderboard of the picked jobs."""
    raw = request.query_params.get("jobs", "")
    try:
        ids = list(dict.fromkeys(int(part) for part in raw.split(",") if part.strip()))
    except ValueError:
        return problem_page(request, 400, f"jobs={raw!r} is not a comma-separated list of job ids")
    if not ids:
        return problem_page(request, 400, "pick jobs to compare on the jobs page (or give ?jobs=1,2,3)")
    return comparison(request, None, ids)


# --- workers and login ----------------------------------------------------------------------------------------


def workers_page(request: Request) -> Response:
    """``/workers``: live workers and the jobs waiting on each queue."""
    client = client_of(request)
    context = {"workers": client.workers(), "queues": dashboard.queue_depths(client)}
    return render(request, "workers.html", context)


def login(request: Request) -> Response:
    """``/login?token=TOKEN``: sets the token cookie and goes to the jobs page; 401 for a wrong token."""
    token = request.app.state.token
    if token is None:
        return RedirectResponse("/", status_code=303)
    if not same_token(request.query_params.get("token"), token):
        return PlainTextResponse("401: wrong or missing token; log in with /login?token=$TLQ_UI_TOKEN\n", 401)
    response = RedirectResponse("/", status_code=303)
    response.headers.append("set-cookie", token_cookie_header(token))
    return response


routes = [
    Route("/", jobs_page),
    Route("/jobs/{job_id:int}", job_page),
    Route("/groups/{group_id:int}", group_page),
    Route("/compare", compare_page),
    Route("/workers", workers_page),
    Route("/login", login),
]
