"""`tlq ui` under attack and on a flaky footing, server side: ids no database can hold, cookies other sites on this
host set, Host headers that only look local, artifact names that are not URL-safe, a database that goes away and
comes back (its URL's password never shown), and `tlq ui` on a port in use or on every address."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time

import pytest
from starlette.testclient import TestClient

from tests.support import ToggleProxy, tlq_env
from tests.ui.app_support import TOKEN, AppServer, build_setup, record_file

HUGE = 10**20  # past SQLite's 64 bits; 2**31 is past PostgreSQL's INTEGER


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("ui-attacks"))


@pytest.fixture(scope="module")
def local(setup):
    from tlq.ui.app import create_app

    app = create_app(setup.settings, token="")
    with TestClient(app, base_url="http://127.0.0.1:8765", raise_server_exceptions=False) as client:
        assert client.get("/").status_code == 200  # the CSRF cookie
        yield client


@pytest.mark.parametrize("big", [HUGE, 2**31])
@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/jobs/{n}", 404),
        ("/api/jobs/{n}/metrics", 404),
        ("/api/jobs/{n}/artifacts", 404),
        ("/api/jobs/{n}/log", 404),
        ("/jobs/{n}", 404),
        ("/artifacts/{n}/curves.png", 404),
        ("/groups/{n}", 404),
        ("/compare?jobs=1,{n}", 404),
        ("/api/compare?jobs=1,{n}", 400),
        ("/api/compare?group={n}", 400),
        ("/api/jobs?page={n}", 400),
        ("/api/jobs?group={n}", 400),
        ("/?page={n}", 400),
        ("/api/results?limit={n}", 400),
    ],
)
def test_an_id_or_number_no_database_column_holds_is_a_clear_4xx_not_a_500(local, path, status, big):
    answer = local.get(path.format(n=big))
    assert answer.status_code == status, answer.text
    if path.startswith("/api/"):
        assert str(big) in answer.json()["error"]


def test_a_cookie_another_site_on_this_host_set_hides_none_of_the_dashboards(setup, local):
    """Cookies ignore ports: a `localhost:3000` app's cookie with a space or a quote in its value comes along to
    `localhost:8765`, and must not log the user out nor make every write 403."""
    from tlq.ui.app import create_app

    foreign = ['other={"a": 1}', "x=a b", 'q="a\\\\"']
    with TestClient(create_app(setup.settings, token=TOKEN), base_url="http://192.0.2.10:8765") as guarded:
        for cookie in foreign:
            headers = {"Cookie": f"{cookie}; tlq_ui_token={TOKEN}"}
            assert guarded.get("/api/jobs", headers=headers).status_code == 200, cookie
    job = setup.ids["a"]  # finished: cancelling it changes nothing and says so
    for cookie in foreign:
        headers = {"Cookie": f"{cookie}; tlq_csrf=abc", "X-CSRF-Token": "abc"}
        answer = local.post(f"/api/jobs/{job}/cancel", headers=headers)
        assert answer.status_code == 200 and answer.json() == {"status": "succeeded"}, (cookie, answer.text)


@pytest.mark.parametrize(
    "host",
    ["localhost:80@evil.example", "127.0.0.1:evil.example", "[::1].evil.example", "::1", "localhost:1:2", "", "[::1"],
)
def test_a_host_header_that_only_starts_like_a_local_name_is_403(setup, host):
    from tlq.ui.app import create_app

    with TestClient(create_app(setup.settings, token="")) as client:
        assert client.get("/api/jobs", headers={"Host": host}).status_code == 403, host
        for good in ("127.0.0.1:8765", "[::1]", "LOCALHOST:1"):
            assert client.get("/api/jobs", headers={"Host": good}).status_code == 200, good


URL_UNSAFE = ["class#1.png", "what?.csv", "a%2fb.txt", "100%.txt", "new\nline.txt", "sp ace.txt", "q\"'<>.txt"]


@pytest.fixture(scope="module")
def served(setup):
    """The tokenless dashboard served by uvicorn (the TestClient decodes a path twice); its port."""
    from tlq.ui.app import create_app

    server = AppServer(create_app(setup.settings, token="")).start()
    yield server.port
    server.stop()


def test_an_artifact_whose_name_is_not_url_safe_still_has_a_link_that_serves_it(setup, local, served):
    import http.client

    from tlq.db import queries

    with setup.env.db.session() as session:
        job = queries.create_job(session, task="finetune", backbone="vgg16", params={}, queue="cpu", name="names")
        for name in URL_UNSAFE:
            record_file(session, setup.settings.artifacts_dir, job.id, name, "notes", name.encode())
    listed = {a["name"]: a["url"] for a in local.get(f"/api/jobs/{job.id}/artifacts").json()}
    page = local.get(f"/jobs/{job.id}").text
    for name in URL_UNSAFE:
        url = listed[name]
        assert f'href="{url}"' in page and not {"#", "?", "\n", " "} & set(url), url  # the page links the same
        conn = http.client.HTTPConnection("127.0.0.1", served, timeout=10)
        try:
            conn.request("GET", url)  # as a browser sends the link: the path as written
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, name.encode()), (name, url)
        finally:
            conn.close()


# --- a database that goes away ----------------------------------------------------------------------------------

PASSWORD = "Pw-S3cret-9"


@pytest.fixture
def flaky(pg_url, tmp_path):
    """The dashboard on PostgreSQL through a relay the test cuts, by a URL with a password (trust auth ignores it)."""
    from urllib.parse import urlsplit

    from tlq.ui.app import create_app

    relay = ToggleProxy(5432).up()
    parts = urlsplit(pg_url)
    url = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{relay.port}{parts.path}"
    setup = build_setup(tmp_path, database_url=url)
    app = create_app(setup.settings, token="")
    try:
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:  # an unhandled error would raise here
            assert client.get("/").status_code == 200
            yield client, relay, setup
    finally:
        relay.down()
        setup.env.db.engine.dispose()


def test_a_database_that_stops_answering_is_a_503_naming_it_masked_and_the_dashboard_recovers(flaky, caplog):
    client, relay, setup = flaky
    a = setup.ids["a"]
    paths = ["/", f"/jobs/{a}", "/workers", "/api/jobs", f"/api/jobs/{a}", f"/api/jobs/{a}/metrics", "/api/workers"]
    paths += [f"/artifacts/{a}/curves.png", f"/compare?jobs={a},{setup.ids['b']}"]
    caplog.set_level(logging.DEBUG)
    relay.down()
    for path in paths:
        answer = client.get(path)
        assert answer.status_code == 503, (path, answer.status_code)
        assert "cannot reach the database at postgresql+psycopg://postgres:***@127.0.0.1" in answer.text, path
        assert "start it, or point TLQ_DATABASE_URL" in answer.text and "Traceback" not in answer.text
        assert PASSWORD not in answer.text
        if path.startswith("/api/"):
            assert set(answer.json()) == {"error"}
    csrf = {"X-CSRF-Token": client.cookies["tlq_csrf"]}
    assert client.post(f"/api/jobs/{setup.ids['d']}/cancel", headers=csrf).status_code == 503
    assert PASSWORD not in caplog.text
    relay.up()
    for path in paths:
        assert client.get(path).status_code == 200, path


def test_a_database_whose_connections_are_all_taken_is_a_503_saying_it_is_busy(local, monkeypatch):
    """Many tabs on a job of a million metric rows: each poll holds a connection for seconds."""
    engine = local.app.state.client.env.db.engine
    monkeypatch.setattr(engine.pool, "_timeout", 0.2)  # rather than 30 s
    held = [engine.connect() for _ in range(engine.pool.size() + engine.pool._max_overflow)]
    try:
        answer = local.get("/api/jobs")
    finally:
        for conn in held:
            conn.close()
    assert answer.status_code == 503 and "is busy" in answer.json()["error"], answer.text
    assert local.get("/api/jobs").status_code == 200


# --- `tlq ui` on the command line ---------------------------------------------------------------------------------


def test_tlq_ui_on_a_port_in_use_says_so_in_one_line_before_printing_any_url(setup):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(cli, ["--home", str(setup.settings.home), "ui", "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert "serving" not in result.stdout
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"Error: port {port} on 127.0.0.1 is in use") and "--port" in line


def test_tlq_ui_on_every_ipv6_address_serves_ipv4_too(setup, tmp_path):
    """`--host ::` means every address: a browser opening http://127.0.0.1:PORT must reach it as well."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = tlq_env(setup.settings.home, TLQ_UI_TOKEN=TOKEN)
    log = (tmp_path / "ui.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "tlq", "ui", "--host", "::", "--port", str(port)], env=env, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while True:  # up once IPv6 answers
            try:
                socket.create_connection(("::1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "ui.log").read_text()
                time.sleep(0.2)
        socket.create_connection(("127.0.0.1", port), timeout=2).close()  # ConnectionRefusedError if IPv6 only
    finally:
        server.terminate()
        server.wait(20)
        log.close()
