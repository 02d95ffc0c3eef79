"""The `tlq ui` web app: ``create_app`` builds it for one tlq setup (its database and artifacts directory).

    from tlq.config import Settings
    from tlq.ui.app import create_app

    app = create_app(Settings.load(), token="...")   # any ASGI server runs it; `tlq ui` runs it with uvicorn

Pages (``tlq.ui.pages``) are rendered on the server from Jinja2 templates with autoescaping on; their scripts
(``static/``, uPlot included, nothing from a CDN) poll the JSON API (``tlq.ui.api``) for the live parts.
``tlq.ui.security.Guard`` sits in front of every route.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from tlq.client import Client
from tlq.config import Settings
from tlq.db.engine import DatabaseUnavailable
from tlq.ui import api, pages
from tlq.ui.security import Guard, check_token, token_from_environment

HERE = Path(__file__).resolve().parent
# What a database that does not answer raises mid-request (connection refused or lost, locked, pool exhausted).
DATABASE_ERRORS = (OperationalError, InterfaceError, PoolTimeout, DatabaseUnavailable)


def format_number(value: Any) -> str:
    """A metric value for people: 4 significant digits, integers whole (as the pages' script writes them)."""
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.4g}"


def format_time(value: str | None) -> str:
    """An ISO time as ``YYYY-MM-DD HH:MM:SS`` (UTC, as stored)."""
    return value[:19].replace("T", " ") if value else ""


def format_size(size: int | None) -> str:
    """A byte count for people: 532 B, 14.2 KB, 3.1 MB."""
    if size is None:
        return ""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(size)


def format_param(value: Any) -> str:
    """A parameter's value as text: strings as they are, everything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def format_tags(tags: Mapping[str, Any] | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (tags or {}).items())


def database_unavailable(request: Request, exc: Exception) -> Response:
    """503 for a database that does not answer (stopped, restarting, locked past the busy timeout, out of pooled
    connections): the CLI's one line, its URL masked, never a traceback; the pages' scripts keep polling and
    recover when it is back, and a page that could not be rendered reloads itself."""
    from tlq.config import mask_secrets_in

    url = request.app.state.client.env.db.masked_url
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    if isinstance(exc, PoolTimeout):
        message = f"the database at {url} is busy: every connection of the dashboard stayed in use; close some tabs"
    else:
        message = (
            f"cannot reach the database at {url} ({mask_secrets_in(reason)}); "
            "start it, or point TLQ_DATABASE_URL / --database-url at one that runs"
        )
    if request.url.path.startswith("/api/"):
        return api.error(503, message)
    if request.url.path.startswith("/artifacts/"):
        return PlainTextResponse(f"503: {message}\n", status_code=503)
    return pages.problem_page(request, 503, message)


def templates() -> Jinja2Templates:
    """The page templates, autoescaping everything they insert (names, tags, paths, errors are user text)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        num=format_number, when=format_time, size=format_size, param=format_param, tags=format_tags
    )
    return Jinja2Templates(env=environment)


def create_app(
    settings: Settings,
    token: str | None = None,
    allowed_hosts: tuple[str, ...] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Starlette:
    """The dashboard for the tlq setup of ``settings``.

    Args:
        settings: Whose database and artifacts to show.
        token: Required on every request; None reads ``TLQ_UI_TOKEN`` (from ``environ``, else the process's
            environment), and an empty string turns the token off.
        allowed_hosts: Host names a dashboard without a token answers (default 127.0.0.1, localhost, ::1).

    Raises:
        BadInput: The token holds a character a cookie cannot carry.
    """
    if token is None:
        token = token_from_environment(environ)
    if token:
        check_token(token)
    app = Starlette(
        routes=[
            *pages.routes,
            *api.routes,
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static"),
        ],
        middleware=[Middleware(Guard, token=token or None, allowed_hosts=allowed_hosts)],
        exception_handlers=dict.fromkeys(DATABASE_ERRORS, database_unavailable),
    )
    client = Client(settings=settings)
    # Built and migrated here, once, not by the first requests' threads racing to do it.
    client.env.db.ensure_schema()
    client.env.tasks.names()
    app.state.client = client
    app.state.templates = templates()
    app.state.token = token or None
    return app
