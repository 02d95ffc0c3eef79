"""`tlq ui`'s guards on the server side: the token on every route, the login cookie, CSRF on writes, the hosts a
tokenless dashboard answers, artifact paths that cannot leave the job's folder, and `tlq ui` refusing to serve
beyond this machine without a token."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.ui.app_support import TOKEN, build_setup

# Every kind of route: pages, API reads and writes, static files, artifacts, an unknown path.
ROUTES = [
    ("GET", "/"),
    ("GET", "/?where=val_acc%20%3E%200.5"),
    ("GET", "/jobs/{a}"),
    ("GET", "/groups/{group}"),
    ("GET", "/compare?jobs={a},{b}"),
    ("GET", "/workers"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{a}"),
    ("GET", "/api/jobs/{a}/metrics"),
    ("GET", "/api/jobs/{a}/artifacts"),
    ("GET", "/api/jobs/{a}/log"),
    ("GET", "/api/compare?jobs={a},{b}"),
    ("GET", "/api/results?where=val_acc%20%3E%200.5"),
    ("GET", "/api/workers"),
    ("POST", "/api/jobs/{c}/cancel"),
    ("POST", "/api/jobs/{c}/retry"),
    ("GET", "/static/tlq.js"),
    ("GET", "/static/tlq.css"),
    ("GET", "/static/vendor/uPlot.iife.min.js"),
    ("GET", "/artifacts/{a}/curves.png"),
    ("GET", "/artifacts/{a}/per_class_accuracy.csv"),
    ("GET", "/no-such-page"),
]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("ui-security"))


@pytest.fixture(scope="module")
def guarded(setup):
    """The dashboard as `TLQ_UI_TOKEN=... tlq ui --host 0.0.0.0` serves it (the token read from the environment)."""
    from tlq.ui.app import create_app

    app = create_app(setup.settings, environ={"TLQ_UI_TOKEN": TOKEN})
    with TestClient(app, base_url="http://192.0.2.10:8765") as client:
        yield client


@pytest.fixture(scope="module")
def local(setup):
    from tlq.ui.app import create_app

    with TestClient(create_app(setup.settings, token=""), base_url="http://127.0.0.1:8765") as client:
        assert client.get("/").status_code == 200  # the CSRF cookie
        yield client


def request(client, method: str, path: str, setup, headers=None, cookies=None):
    """One request with exactly these headers and cookies (the client's own cookies cleared first)."""
    client.cookies.clear()
    for name, value in (cookies or {}).items():
        client.cookies.set(name, value)
    try:
        return client.request(method, path.format(**setup.ids, group=setup.group), headers=headers)
    finally:
        client.cookies.clear()


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"headers": {"Authorization": "Bearer wrong-token"}},
        {"headers": {"Authorization": f"Basic {TOKEN}"}},
        {"headers": {"Authorization": f"Bearer {TOKEN}x"}},
        {"cookies": {"tlq_ui_token": TOKEN[:-1]}},
        {"cookies": {"tlq_csrf": "x"}, "headers": {"X-CSRF-Token": "x"}},
    ],
    ids=["none", "wrong bearer", "basic", "longer", "wrong cookie", "csrf only"],
)
def test_every_route_answers_401_without_the_token(guarded, setup, method, path, credentials):
    answer = request(guarded, method, path, setup, **credentials)
    assert answer.status_code == 401, answer.text
    assert answer.headers["www-authenticate"].startswith("Bearer")
    if path.startswith("/api/"):
        assert "TLQ_UI_TOKEN" in answer.json()["error"]


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[0] == "GET" and r[1] != "/no-such-page"])
@pytest.mark.parametrize("how", ["bearer", "cookie"])
def test_every_route_answers_200_with_the_bearer_token_or_the_login_cookie(guarded, setup, method, path, how):
    if how == "bearer":
        answer = request(guarded, method, path, setup, headers={"Authorization": f"Bearer {TOKEN}"})
    else:
        answer = request(guarded, method, path, setup, cookies={"tlq_ui_token": TOKEN})
    assert answer.status_code == 200, answer.text


def test_login_sets_an_httponly_same_site_cookie_and_goes_to_the_jobs_page(guarded, setup):
    guarded.cookies.clear()
    assert guarded.get("/login?token=wrong", follow_redirects=False).status_code == 401
    assert guarded.get("/login", follow_redirects=False).status_code == 401
    answer = guarded.get(f"/login?token={TOKEN}", follow_redirects=False)
    assert answer.status_code == 303 and answer.headers["location"] == "/"
    cookie = answer.headers["set-cookie"]
    assert cookie.startswith(f"tlq_ui_token={TOKEN};") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    page = guarded.get("/")  # the client keeps the cookie, as a browser does
    assert page.status_code == 200 and 'id="jobs"' in page.text
    csrf = page.cookies.get("tlq_csrf") or guarded.cookies.get("tlq_csrf")
    assert csrf and "HttpOnly" not in page.headers["set-cookie"] and "SameSite=Strict" in page.headers["set-cookie"]
    assert guarded.get("/").headers.get("set-cookie") is None  # set once, kept while the browser has it
    guarded.cookies.clear()


@pytest.mark.parametrize(
    "csrf",
    [{}, {"headers": {"X-CSRF-Token": "forged"}}, {"cookies": {"tlq_csrf": "a"}}, {"cookies": {"tlq_csrf": ""}}],
    ids=["neither", "header only", "cookie only", "empty"],
)
@pytest.mark.parametrize("action", ["cancel", "retry"])
def test_a_write_without_the_csrf_header_matching_its_cookie_is_403_and_changes_nothing(local, setup, csrf, action):
    from tlq.client import Client

    job_id = setup.ids["d"]
    saved = dict(local.cookies)
    try:
        answer = request(local, "POST", f"/api/jobs/{job_id}/{action}", setup, **csrf)
    finally:
        local.cookies.update(saved)
    assert answer.status_code == 403 and "X-CSRF-Token" in answer.json()["error"]
    client = Client(settings=setup.settings)
    assert client.get(job_id)["status"] == "queued" and client.list_jobs(limit=None)[0]["id"] == max(setup.ids.values())


def test_a_write_with_the_csrf_header_passes_and_reads_need_none(local, setup):
    token = local.cookies["tlq_csrf"]
    assert local.post(f"/api/jobs/{setup.ids['a']}/cancel", headers={"X-CSRF-Token": token}).json() == {
        "status": "succeeded"  # cancelling a finished job changes nothing and says what it is
    }
    assert local.get("/api/jobs/1/cancel").status_code == 405  # a write is never a GET


def test_a_dashboard_without_a_token_answers_only_requests_to_this_machine(setup):
    """DNS rebinding: a page on evil.example whose name now points at 127.0.0.1 sends Host: evil.example."""
    from tlq.ui.app import create_app

    app = create_app(setup.settings, token="")
    for host in ("127.0.0.1:8765", "localhost:8765", "[::1]:8765", "localhost"):
        assert TestClient(app).get("/api/jobs", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example:8765", "192.0.2.10", "127.0.0.1.evil.example"):
        assert TestClient(app).get("/api/jobs", headers={"Host": host}).status_code == 403, host


def test_every_response_carries_the_security_headers(local, setup):
    page = local.get("/")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["x-content-type-options"] == "nosniff"
    artifact = local.get(f"/artifacts/{setup.ids['a']}/curves.png")
    assert artifact.headers["content-security-policy"].startswith("sandbox")


ESCAPES = [
    "/artifacts/{a}/../../secret.txt",
    "/artifacts/{a}/..%2f..%2fsecret.txt",
    "/artifacts/{a}/%2e%2e/%2e%2e/secret.txt",
    "/artifacts/{a}/..%5c..%5csecret.txt",
    "/artifacts/{a}/%2fetc%2fpasswd",
    "/artifacts/{a}/leak.txt",  # recorded, but a symbolic link that leads out of the job's folder
    "/artifacts/{a}/unrecorded.txt",  # in the folder, never recorded
    "/artifacts/{b}/curves.png",  # another job's name for a file it does not have
    "/artifacts/99999/curves.png",
    "/artifacts/{a}/curves.png%00.txt",
    "/artifacts/../secret.txt",
]


@pytest.mark.parametrize("path", ESCAPES)
def test_artifact_paths_outside_the_jobs_recorded_files_are_404(local, setup, path):
    answer = local.get(path.format(**setup.ids))
    assert answer.status_code == 404, (path, answer.status_code)
    assert b"not for the web" not in answer.content


@pytest.fixture(scope="module")
def served(setup):
    """The tokenless dashboard served by uvicorn on a free port, for requests sent byte for byte."""
    import socket
    import threading
    import time

    import uvicorn

    from tlq.ui.app import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(setup.settings, token=""), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield port
    server.should_exit = True
    thread.join(10)


def raw_get(port: int, path: str) -> tuple[int, bytes]:
    """GET ``path`` exactly as written: no client-side folding of ``..`` (httpx and browsers fold it)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


@pytest.mark.parametrize(
    "path",
    [
        "/artifacts/{a}/../../secret.txt",
        "/artifacts/{a}/../{b}/curves.png",
        "/artifacts/{a}/./curves.png",
        "/artifacts/{a}/sub/../curves.png",
        "/artifacts/{a}//curves.png",
        "/artifacts/{a}/sub/./notes.txt",
        "/artifacts/../secret.txt",
        "/artifacts/{a}/%2e%2e/%2e%2e/secret.txt",
    ],
)
def test_artifact_paths_sent_unfolded_are_404(served, setup, path):
    assert raw_get(served, f"/artifacts/{setup.ids['a']}/curves.png")[0] == 200
    status, body = raw_get(served, path.format(**setup.ids))
    assert status == 404 and b"not for the web" not in body


# --- `tlq ui` on the command line ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::"])
def test_tlq_ui_refuses_to_serve_beyond_this_machine_without_a_token(setup, monkeypatch, host):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    monkeypatch.delenv("TLQ_UI_TOKEN", raising=False)
    result = CliRunner().invoke(cli, ["--home", str(setup.settings.home), "ui", "--host", host])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: --host {host} ") and "set TLQ_UI_TOKEN" in line and "--host 127.0.0.1" in line


def test_a_token_a_cookie_cannot_carry_is_refused(setup):
    from tlq.errors import BadInput
    from tlq.ui.app import create_app

    with pytest.raises(BadInput, match="TLQ_UI_TOKEN holds a character"):
        create_app(setup.settings, token="a b;c")
