"""What keeps `tlq ui` safe to run: the access token on every route, CSRF on every write, the hosts a tokenless
dashboard answers, and artifact paths that cannot leave the job's own folder.

- With a token, a request gets anything (pages, API, static files, artifacts) only with ``Authorization: Bearer
  TOKEN`` or the ``tlq_ui_token`` cookie that ``GET /login?token=TOKEN`` sets; tokens are compared in constant
  time. Without one, the dashboard serves only requests addressed to this machine's loopback names, so a page
  elsewhere cannot reach it through DNS rebinding.
- A write is a POST whose ``X-CSRF-Token`` header equals its ``tlq_csrf`` cookie (double submit: another site can
  neither read the cookie nor, with SameSite=Strict, send it).
"""

from __future__ import annotations

import hmac
import json
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from starlette.requests import cookie_parser

TOKEN_VARIABLE = "TLQ_UI_TOKEN"
TOKEN_COOKIE = "tlq_ui_token"
CSRF_COOKIE = "tlq_csrf"
CSRF_HEADER = "x-csrf-token"
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
TOKEN_CHARACTERS = re.compile(r"[A-Za-z0-9._~+/=-]+")
# A Host header: a name or IPv4 address, or an IPv6 address in brackets, then an optional port; nothing else.
HOST_HEADER = re.compile(r"(?P<name>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::[0-9]{1,5})?")
# Pages and API: scripts, styles and images from this server only; nothing may frame it.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
# An artifact is data a job wrote: opened on its own, it runs nothing (an SVG or HTML file with a script).
ARTIFACT_POLICY = "sandbox; default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'"


def token_from_environment(environ: Mapping[str, str] | None = None) -> str | None:
    """The dashboard's token from ``TLQ_UI_TOKEN`` (blank counts as unset)."""
    value = (os.environ if environ is None else environ).get(TOKEN_VARIABLE, "").strip()
    return value or None


def check_token(token: str) -> str:
    """``token`` if it can travel in a cookie and a header unchanged; BadInput naming the fix otherwise."""
    from tlq.errors import BadInput

    if not TOKEN_CHARACTERS.fullmatch(token):
        raise BadInput(
            f"{TOKEN_VARIABLE} holds a character other than letters, digits and . _ ~ + / = -; "
            "set it to a fresh one: openssl rand -hex 24"
        )
    return token


def is_local(host: str) -> bool:
    """Whether binding ``host`` serves this machine only."""
    return host.strip("[]").lower() in LOCAL_HOSTS


def same_token(given: str | None, token: str) -> bool:
    """``given == token`` in time that does not depend on where they differ."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_cookie_header(value: str) -> str:
    """The Set-Cookie value of a fresh CSRF cookie: readable by the page's script (not HttpOnly), same-site only."""
    return f"{CSRF_COOKIE}={value}; Path=/; SameSite=Strict"


def token_cookie_header(token: str) -> str:
    return f"{TOKEN_COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict"


def _headers(scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


def _cookies(headers: dict[str, str]) -> dict[str, str]:
    """The request's cookies, parsed as Starlette parses them for the pages: leniently, so that a cookie another
    site on this host set (a space or a quote in its value) hides none of the dashboard's (the stdlib's
    SimpleCookie drops every cookie of a header it cannot parse whole)."""
    return cookie_parser(headers.get("cookie", ""))


def _host_name(host_header: str) -> str:
    """The name in a Host header (an IPv6 address without its brackets), or "" when the header is anything but
    ``NAME[:PORT]``: ``localhost:80@evil.example`` or ``[::1].evil.example`` name no host of ours."""
    found = HOST_HEADER.fullmatch(host_header)
    return found["name"].strip("[]") if found else ""


class Guard:
    """ASGI middleware in front of the whole app: the token, the allowed hosts, CSRF on writes, and security
    headers on every response.

    Args:
        app: The app behind it.
        token: Required on every request when set.
        allowed_hosts: Host names a tokenless dashboard answers (default: the loopback names).
    """

    def __init__(self, app, token: str | None, allowed_hosts: tuple[str, ...] | None = None) -> None:
        self.app = app
        self.token = token
        self.allowed_hosts = tuple(h.lower() for h in (allowed_hosts or LOCAL_HOSTS))

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "websocket":  # the dashboard has none; nothing gets past the guard unchecked
            await send({"type": "websocket.close", "code": 1008})
            return
        if scope["type"] != "http":  # lifespan
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        cookies = _cookies(headers)
        path = scope.get("path", "")
        if self.token is None:
            if _host_name(headers.get("host", "")).lower() not in self.allowed_hosts:
                await _refuse(send, path, 403, "this dashboard answers requests to 127.0.0.1 or localhost only")
                return
        elif path != "/login" and not self._authorized(headers, cookies):
            await _refuse(send, path, 401, "log in with /login?token=$TLQ_UI_TOKEN, or send Authorization: Bearer")
            return
        if scope["method"] not in SAFE_METHODS:
            cookie = cookies.get(CSRF_COOKIE)
            if not cookie or not same_token(headers.get(CSRF_HEADER), cookie):
                await _refuse(send, path, 403, f"a write needs the {CSRF_COOKIE} cookie echoed in X-CSRF-Token")
                return
        await self.app(scope, receive, _with_security_headers(send, path))

    def _authorized(self, headers: dict[str, str], cookies: dict[str, str]) -> bool:
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and same_token(given.strip(), self.token):
            return True
        return same_token(cookies.get(TOKEN_COOKIE), self.token)


def _with_security_headers(send, path: str):
    policy = ARTIFACT_POLICY if path.startswith("/artifacts/") else PAGE_POLICY

    async def sending(message) -> None:
        if message["type"] == "http.response.start":
            extra = [
                (b"content-security-policy", policy.encode()),
                (b"x-content-type-options", b"nosniff"),
                (b"x-frame-options", b"DENY"),
                (b"referrer-policy", b"no-referrer"),
                (b"cache-control", b"no-store"),
            ]
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


async def _refuse(send, path: str, status: int, message: str) -> None:
    """Answers ``status`` with ``message``: JSON under /api/, plain text elsewhere."""
    if path.startswith("/api/"):
        body, kind = json.dumps({"error": message}).encode(), b"application/json"
    else:
        body, kind = f"{status}: {message}\n".encode(), b"text/plain; charset=utf-8"
    headers = [(b"content-type", kind), (b"content-length", str(len(body)).encode()), (b"cache-control", b"no-store")]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="tlq"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def artifact_file(artifacts_dir: Path, job_id: int, name: str, recorded: list[str]) -> Path | None:
    """The file behind ``/artifacts/JOB/NAME``, or None when it must not be served.

    Served only when ``NAME`` is a plain relative path (no ``..``, no backslash, no NUL), the job recorded it
    (``recorded``: the names ``web_artifacts`` lists), and it resolves, symbolic links followed, to a regular file
    inside the job's own folder under the artifacts directory.
    """
    if not name or "\x00" in name or "\\" in name:
        return None
    parts = PurePosixPath(name).parts
    if PurePosixPath(name).is_absolute() or any(part in ("..", ".", "") for part in parts) or name not in recorded:
        return None
    job_dir = Path(artifacts_dir) / str(job_id)
    try:
        real_dir = job_dir.resolve(strict=True)
        real = job_dir.joinpath(*parts).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if real_dir != Path(artifacts_dir).resolve() / str(job_id) or not real.is_relative_to(real_dir):
        return None
    if not real.is_file():
        return None
    return real
