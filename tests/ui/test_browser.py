"""`tlq ui` in a real browser: headless Chromium (Debian's package, `make browser`) driven by Playwright, against
real `tlq ui` servers and a real worker running real jobs on tiny data.

One module-wide setup: a worker (embedded broker, the queue's test tasks on its path), a dashboard on 127.0.0.1
and a second one bound to 0.0.0.0 behind ``TLQ_UI_TOKEN``, all on one TLQ_HOME, and a sweep of two small
fine-tunes (curves, PNG images, CSV files) queued at once. The `sleep` test task gives jobs whose status a test
can watch change. Each page's full screenshot lands in ``ui-screenshots`` under pytest's base temporary folder
(the README shows two of them, from docs/ui/).

A missing browser or Playwright fails these tests, never skips them: `make test` installs Chromium.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import urlparse

import pytest

from tests.support import WorkerProcess, make_digits, run_tlq, tlq_env, tlq_json, wait_for_status, wait_until

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
TOKEN = "secret-token"
WORKER = "ui-worker"
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_TAG = "<script>alert(2)</script>"
BAD_WHERE = "status = = 'queued'"
# A test_resnet fine-tune of three epochs on 32-pixel digits: a curve of three points per epoch metric, PNGs
# (confusion matrix, curves) and CSVs (confusion matrix, per-class accuracy), in a couple of seconds.
TINY_TRAINING = {
    "backbone": "test_resnet",
    "pretrained": False,
    "strategy": "full",
    "epochs": 3,
    "image_size": 32,
    "augment": "none",
    "batch_size": 16,
    "precision": "fp32",
    "loader_workers": 0,
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def raw_get(port: int, path: str, headers: dict | None = None, method: str = "GET") -> tuple[int, bytes]:
    """One HTTP request with ``path`` sent exactly as written (no client-side ``..`` folding, as a browser does)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for key, value in (headers or {}).items():
            conn.putheader(key, value)
        if method == "POST":
            conn.putheader("Content-Length", "0")
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


class UiServer:
    """A real `tlq ui` in its own process group, logging to a file."""

    def __init__(self, env: dict, log_path: Path, host: str) -> None:
        self.env, self.log_path, self.host = env, Path(log_path), host
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> UiServer:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlq", "ui", "--host", self.host, "--port", str(self.port)],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, timeout: float = 60) -> UiServer:
        """Waits until the server answers HTTP at all (a 401 from the token-guarded one counts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"tlq ui --host {self.host} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                raw_get(self.port, "/")
                return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"tlq ui not answering on port {self.port} after {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM (a graceful shutdown), then SIGKILL to whatever is left of its process group."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium from the distribution's package (never a downloaded one)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is not installed in this environment: `make venv` (pip install -e '.[dev]')")
    executable = shutil.which("chromium") or CHROMIUM
    if not Path(executable).exists():
        pytest.fail(
            "headless Chromium is not installed: `make test` installs it (`make browser`), "
            "or apt-get install -y chromium chromium-driver"
        )
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    folder = tmp_path_factory.getbasetemp() / "ui-screenshots"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def ui(tmp_path_factory, plugin_site):
    """A worker, the local dashboard and the token-guarded one on one TLQ_HOME, and a queued sweep of two
    fine-tunes; the client in this process sees the test tasks too."""
    from tlq.client import Client
    from tlq.config import Settings

    root = tmp_path_factory.mktemp("ui")
    env = tlq_env(root / "home", PYTHONPATH=str(plugin_site))
    data = make_digits(root / "digits", classes=range(3), per_class=4, size=32)
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plugin_site))  # the `sleep` task for the client in this process
        client = Client(settings=Settings.load(environ=env))
        client.env.db.ensure_schema()  # once, before three processes open the database at the same time
        worker = WorkerProcess(env, root / "worker.log", "--name", WORKER).start()
        local = UiServer(env, root / "ui.log", "127.0.0.1").start()
        exposed = UiServer({**env, "TLQ_UI_TOKEN": TOKEN}, root / "ui-exposed.log", "0.0.0.0").start()
        try:
            worker.wait_ready()
            local.wait_ready()
            exposed.wait_ready()
            sweep = client.sweep("finetune", {"lr": [3e-3, 3e-4]}, name="ui sweep", data=str(data), **TINY_TRAINING)
            yield SimpleNamespace(
                env=env,
                home=root / "home",
                client=client,
                url=local.url,
                local=local,
                exposed=exposed,
                worker=worker,
                sweep=sweep,
            )
        finally:
            for server in (local, exposed):
                server.stop()
            worker.discard()


@pytest.fixture
def tab(browser, ui):
    """A fresh browser context and page that records every dialog (accepting it) and every script error."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(30_000)
    page = context.new_page()
    seen = SimpleNamespace(page=page, context=context, dialogs=[], errors=[])
    page.on("dialog", lambda dialog: (seen.dialogs.append((dialog.type, dialog.message)), dialog.accept()))
    page.on("pageerror", lambda error: seen.errors.append(str(error)))
    yield seen
    context.close()
    assert not seen.errors, f"script errors on the page: {seen.errors}"


def finished(ui, job_id: int, timeout: float = 120) -> dict:
    job = ui.client.wait(job_id, timeout=timeout)
    assert job["status"] == "succeeded", f"job {job_id} {job['status']}: {job['error']}"
    return job


def dom_status(page, job_id: int) -> str | None:
    """The status cell's text of a job's row on the jobs page, read now (None while the row is absent)."""
    return page.evaluate(
        'id => { const c = document.querySelector(`table#jobs tr[data-job-id="${id}"] td.status`);'
        " return c ? c.textContent.trim() : null; }",
        job_id,
    )


def leaderboard(page) -> list[int]:
    """The job ids of the page's leaderboard, top row first."""
    page.wait_for_selector("table#leaderboard tr[data-job-id]")
    return page.eval_on_selector_all("table#leaderboard tr[data-job-id]", "rows => rows.map(r => +r.dataset.jobId)")


def relative(ui, artifact: dict, job_id: int) -> str:
    """An artifact's path inside its job's folder."""
    return Path(artifact["path"]).relative_to(ui.home / "artifacts" / str(job_id)).as_posix()


def test_a_submitted_job_goes_queued_running_succeeded_on_the_jobs_page_without_a_reload(ui, tab):
    page = tab.page
    page.goto(ui.url + "/")
    page.wait_for_selector("table#jobs")
    page.evaluate("window.__loadedOnce = 'still here'")  # a reload would lose it
    navigations = []
    page.on("framenavigated", lambda frame: navigations.append(frame.url) if frame == page.main_frame else None)

    # A job ahead of it on the worker's one slot keeps it queued for two seconds at least, whatever runs now.
    blocker = ui.client.submit("sleep", steps=4, step_seconds=0.5, name="blocker")
    watched = ui.client.submit("sleep", steps=6, step_seconds=0.5, name="watched")
    seen: list[str] = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not seen or seen[-1] in ("queued", "running")):
        status = dom_status(page, watched)
        if status is not None and (not seen or seen[-1] != status):
            seen.append(status)
        time.sleep(0.1)

    assert seen == ["queued", "running", "succeeded"], f"statuses shown, in order: {seen}"
    assert page.evaluate("window.__loadedOnce") == "still here" and navigations == [], "the page reloaded"
    assert [ui.client.get(job)["status"] for job in (blocker, watched)] == ["succeeded"] * 2
    assert page.locator(f'table#jobs tr[data-job-id="{watched}"] td.name').inner_text().strip() == "watched"


def test_a_job_page_draws_every_metric_shows_its_images_and_previews_its_csv_files(ui, tab, shots):
    from tlq.ui.app import format_number

    job_id = ui.sweep["jobs"][0]
    job = finished(ui, job_id)
    history = ui.client.metrics(job_id)
    points = Counter(row["name"] for row in history)
    single = {row["name"]: row["value"] for row in history if points[row["name"]] == 1}
    assert {"val_acc", "val_loss", "train_loss", "train_acc"} <= set(points) and points["val_acc"] == 3
    assert {"classes", "train_images", "best_val_acc"} <= set(single)
    page = tab.page
    page.goto(f"{ui.url}/jobs/{job_id}")

    # Every metric is either a chart, drawn (a canvas) with as many points as the database holds (those that
    # share a scale on one chart: data-metric "a,b", data-points "n,m"), or, recorded once, a row of the table
    # #scalars above the charts, showing the database's value.
    charted = sum(n > 1 for n in points.values())
    page.wait_for_function(
        "n => [...document.querySelectorAll('div.chart')].filter(d => d.querySelector('canvas'))"
        ".reduce((sum, d) => sum + d.dataset.metric.split(',').length, 0) >= n",
        arg=charted,
    )
    charts = page.eval_on_selector_all(
        "div.chart",
        "els => els.map(e => [e.dataset.metric, e.dataset.points, e.querySelectorAll('canvas').length])",
    )
    assert all(canvases >= 1 for _, _, canvases in charts), charts
    drawn = {
        name: int(n) for names, counts, _ in charts for name, n in zip(names.split(","), counts.split(","), strict=True)
    }
    assert drawn == {name: n for name, n in points.items() if n > 1}
    assert sum(len(names.split(",")) for names, _, _ in charts) == len(drawn), "a metric is on two charts"
    groups = [set(names.split(",")) for names, _, _ in charts]
    assert {"train_acc", "val_acc"} in groups and {"train_loss", "val_loss"} in groups, groups
    shown = page.eval_on_selector_all(
        "table#scalars tr[data-metric]",
        "rows => rows.map(r => [r.dataset.metric, r.querySelector('td.value').textContent.trim(),"
        " Number(r.querySelector('td.value').dataset.value)])",
    )
    assert {name: value for name, _, value in shown} == single
    assert all(text == format_number(single[name]) for name, text, _ in shown), shown
    assert len(shown) == len(single) and not set(single) & set(drawn)
    assert page.locator("table#scalars").is_visible()
    above = "() => document.querySelector('#scalars').compareDocumentPosition(document.querySelector('#charts'))"
    assert page.evaluate(above) & 4, "the table of single values is not above the charts"
    # It succeeded: no "Error" heading over an empty box.
    headings = page.eval_on_selector_all("h2", "els => els.filter(h => h.offsetParent).map(h => h.textContent)")
    assert "Error" not in headings and not page.locator("#job-error-section").is_visible(), headings

    # Every PNG artifact shown inline, and loaded.
    pngs = {relative(ui, a, job_id) for a in job["artifacts"] if a["path"].endswith(".png")}
    assert {"confusion_matrix.png", "curves.png"} <= pngs
    page.wait_for_function(
        "n => { const imgs = [...document.querySelectorAll('img.artifact')];"
        " return imgs.length >= n && imgs.every(i => i.complete); }",
        arg=len(pngs),
    )
    images = page.eval_on_selector_all("img.artifact", "els => els.map(i => [i.getAttribute('src'), i.naturalWidth])")
    assert {urlparse(src).path.split(f"/artifacts/{job_id}/", 1)[-1] for src, _ in images} == pngs
    assert all(width > 0 for _, width in images), images

    # Each CSV file previewed: its header, then its first data row, as the file has them.
    csvs = [a for a in job["artifacts"] if a["path"].endswith(".csv")]
    assert {"confusion_matrix.csv", "per_class_accuracy.csv"} <= {relative(ui, a, job_id) for a in csvs}
    for artifact in csvs:
        rows = list(csv.reader(Path(artifact["path"]).read_text().splitlines()))
        table = page.locator(f'table.csv-preview[data-name="{relative(ui, artifact, job_id)}"]')
        assert [t.strip() for t in table.locator("thead th").all_inner_texts()] == rows[0]
        assert [t.strip() for t in table.locator("tbody tr").first.locator("td").all_inner_texts()] == rows[1]

    # Every file listed with its sha256 and a link that downloads exactly it.
    files = page.locator("ul#files")
    links = files.locator("a").evaluate_all("els => els.map(a => a.href)")
    listed = files.inner_text()
    for artifact in job["artifacts"]:
        rel = relative(ui, artifact, job_id)
        assert artifact["sha256"][:12] in listed, f"{rel}'s sha256 is not listed"
        href = next((link for link in links if urlparse(link).path.endswith(f"/{rel}")), None)
        assert href, f"no download link for {rel} in {links}"
        if rel.endswith(".csv"):
            body = page.request.get(href).body()
            assert hashlib.sha256(body).hexdigest() == artifact["sha256"]

    assert "strategy" in page.locator("#params").inner_text() and "full" in page.locator("#params").inner_text()
    assert WORKER in page.locator("#attempts").inner_text()
    assert page.locator("#status").inner_text().strip() == "succeeded"
    assert page.locator("pre#log").inner_text().strip(), "the job's log is empty"
    page.screenshot(path=shots / "job.png", full_page=True)


def test_a_sweeps_group_page_ranks_its_jobs_as_tlq_compare_does(ui, tab, shots):
    group, jobs = ui.sweep["group"], ui.sweep["jobs"]
    for job_id in jobs:
        finished(ui, job_id)
    board = tlq_json(["compare", str(group)], ui.env)
    assert sorted(row["job"] for row in board) == sorted(jobs)
    page = tab.page
    page.goto(f"{ui.url}/groups/{group}")
    assert leaderboard(page) == [row["job"] for row in board]
    page.screenshot(path=shots / "group.png", full_page=True)

    # Ranked by a metric whose bests differ (tiny data often ties val_acc), the order itself is tested.
    board = tlq_json(["compare", str(group), "--metric", "val_loss"], ui.env)
    assert len({row["best"] for row in board}) == len(board), board
    page.goto(f"{ui.url}/groups/{group}?metric=val_loss")
    assert leaderboard(page) == [row["job"] for row in board]

    # Jobs picked on the jobs page open the compare page, ranked as `tlq compare ID ID` ranks them.
    page.goto(ui.url + "/")
    for job_id in jobs:
        page.check(f'input.pick[value="{job_id}"]')
    page.click("button#compare")
    page.wait_for_url(re.compile(r"/compare\?"))
    picked = re.search(r"jobs=([^&]+)", page.url).group(1).replace("%2C", ",")
    assert sorted(map(int, picked.split(","))) == sorted(jobs)
    board = tlq_json(["compare", *map(str, jobs)], ui.env)
    assert leaderboard(page) == [row["job"] for row in board]
    page.screenshot(path=shots / "compare.png", full_page=True)


def test_a_bad_where_in_the_filter_box_shows_the_clis_one_line_error(ui, tab):
    cli = run_tlq(["results", "--where", BAD_WHERE], ui.env, check=False)
    assert cli.returncode != 0
    (line,) = cli.stderr.strip().splitlines()
    message = line.removeprefix("Error: ").removeprefix("--where: ")
    assert "column" in message, line
    page = tab.page
    page.goto(ui.url + "/")
    page.fill("form#filters input#where", BAD_WHERE)
    page.press("form#filters input#where", "Enter")
    page.wait_for_function("() => (document.querySelector('#error')?.textContent || '').trim()")
    shown = page.locator("#error").inner_text().strip()
    assert message in shown and len(shown.splitlines()) == 1, f"{shown!r} is not the CLI's {line!r}"
    assert page.locator("#error").is_visible()

    # A good filter clears the error and keeps only the jobs it matches.
    page.fill("form#filters input#where", "task = 'finetune'")
    page.press("form#filters input#where", "Enter")
    page.wait_for_function("() => !(document.querySelector('#error')?.textContent || '').trim()")
    page.wait_for_function(
        "n => document.querySelectorAll('table#jobs tr[data-job-id]').length === n", arg=len(ui.sweep["jobs"])
    )
    shown_ids = page.eval_on_selector_all("table#jobs tr[data-job-id]", "rows => rows.map(r => +r.dataset.jobId)")
    assert sorted(shown_ids) == sorted(ui.sweep["jobs"])


def test_a_job_named_like_markup_shows_as_text_and_runs_no_script(ui, tab):
    page = tab.page
    page.goto(ui.url + "/")
    page.wait_for_selector("table#jobs")
    job_id = ui.client.submit("sleep", steps=2, step_seconds=0.2, name=XSS_NAME, tags={"note": XSS_TAG})
    # Added by the page's own updates first (the script path), then served in the page (the template path).
    row = page.locator(f'table#jobs tr[data-job-id="{job_id}"]')
    row.wait_for()
    finished(ui, job_id)
    wait_until(lambda: dom_status(page, job_id) == "succeeded", 30, "the row's status to show succeeded")
    for where in ("updated live", "rendered by the server"):
        assert row.locator("td.name").inner_text().strip() == XSS_NAME, where
        assert page.get_by_text(XSS_NAME, exact=True).first.is_visible(), where
        assert page.locator('img[src="x"]').count() == 0 and page.locator("table#jobs script").count() == 0, where
        page.reload()
        row.wait_for()
    page.goto(f"{ui.url}/jobs/{job_id}")
    assert XSS_NAME in page.locator("#job-title").inner_text()
    assert page.locator('img[src="x"]').count() == 0
    page.wait_for_timeout(1500)  # a poll or two of the live status
    assert tab.dialogs == [], f"a script ran: {tab.dialogs}"


def test_cancel_stops_a_running_job_and_retry_makes_its_child(ui, tab):
    job_id = ui.client.submit("sleep", steps=120, step_seconds=0.5, name="to cancel")
    wait_for_status(ui.env, job_id, ("running",), timeout=120)
    page = tab.page
    page.goto(f"{ui.url}/jobs/{job_id}")
    status = page.locator("#status")
    wait_until(lambda: status.inner_text().strip() == "running", 15, "the job page to show running")

    # A write without the CSRF header is refused, even with the page's cookies.
    refused = page.request.post(f"{ui.url}/api/jobs/{job_id}/cancel")
    assert refused.status in (400, 403), refused.status
    assert ui.client.get(job_id)["status"] == "running"

    page.click("#cancel")
    wait_until(lambda: status.inner_text().strip() == "cancelled", 30, "the job page to show cancelled")
    assert wait_for_status(ui.env, job_id, ("cancelled", "succeeded", "failed"), timeout=30)["status"] == "cancelled"

    page.click("#retry")
    page.wait_for_url(lambda url: re.search(r"/jobs/\d+$", url) and not url.endswith(f"/jobs/{job_id}"))
    child = int(page.url.rsplit("/", 1)[1])
    try:
        assert child != job_id and ui.client.get(child)["parent_id"] == job_id
        lineage = page.locator("#lineage")
        assert lineage.locator(f'a[href$="/jobs/{job_id}"]').count() >= 1, lineage.inner_html()
        assert page.locator("#job-title").inner_text().strip()
    finally:
        ui.client.cancel(child)  # frees the worker's one slot for the tests after this one


def test_the_token_guarded_server_answers_401_to_every_route_without_the_token(ui, browser):
    job_id, group = ui.sweep["jobs"][0], ui.sweep["group"]
    port = ui.exposed.port
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    status, home = raw_get(port, "/", bearer)
    assert status == 200, home[:500]
    assets = sorted(set(re.findall(rb"""(?:src|href)=["'](/static/[^"'?#]+)""", home)))
    assert assets, "the jobs page loads no /static/ asset"
    finished(ui, job_id)
    csv_path = f"/artifacts/{job_id}/per_class_accuracy.csv"
    assert raw_get(port, csv_path, bearer)[0] == 200
    assert raw_get(port, "/api/jobs", bearer)[0] == 200
    assert raw_get(port, assets[0].decode(), bearer)[0] == 200

    routes = [
        "/",
        f"/jobs/{job_id}",
        f"/groups/{group}",
        f"/compare?jobs={','.join(map(str, ui.sweep['jobs']))}",
        "/workers",
        "/api/jobs",
        f"/api/jobs/{job_id}",
        f"/api/jobs/{job_id}/metrics",
        f"/api/jobs/{job_id}/artifacts",
        f"/api/compare?group={group}",
        "/api/results?where=",
        "/api/workers",
        *(asset.decode() for asset in assets),
        csv_path,
        "/no-such-page",
        "/login?token=wrong-token",
    ]
    wrong = [{}, {"Authorization": "Bearer wrong-token"}, {"Cookie": "tlq_ui_token=wrong-token"}]
    answers = {(route, str(headers)): raw_get(port, route, headers)[0] for route in routes for headers in wrong} | {
        (f"POST {route}", str(headers)): raw_get(port, route, headers, method="POST")[0]
        for route in (f"/api/jobs/{job_id}/cancel", f"/api/jobs/{job_id}/retry")
        for headers in wrong
    }
    assert {key: code for key, code in answers.items() if code != 401} == {}
    assert ui.client.get(job_id)["status"] == "succeeded"

    # The browser gets in through /login?token=, which sets the cookie and leads to the jobs page.
    context = browser.new_context()
    try:
        page = context.new_page()
        assert page.goto(f"{ui.exposed.url}/").status == 401
        page.goto(f"{ui.exposed.url}/login?token={TOKEN}")
        assert urlparse(page.url).path == "/"
        page.wait_for_selector(f'table#jobs tr[data-job-id="{job_id}"]')
        cookie = next(c for c in context.cookies() if c["name"] == "tlq_ui_token")
        assert cookie["httpOnly"], cookie
        assert page.goto(f"{ui.exposed.url}/jobs/{job_id}").status == 200
    finally:
        context.close()

    # Bound beyond this machine without a token, `tlq ui` refuses to start.
    env = {k: v for k, v in ui.env.items() if k != "TLQ_UI_TOKEN"}
    refused = run_tlq(["ui", "--host", "0.0.0.0", "--port", str(free_port())], env, timeout=60, check=False)
    assert refused.returncode != 0 and "TLQ_UI_TOKEN" in refused.stderr, refused.stderr


def test_artifact_urls_never_leave_the_jobs_folder(ui):
    job_id, other = ui.sweep["jobs"]
    finished(ui, job_id)
    secret = ui.home / "secret.txt"
    secret.write_text("not for the web")
    csv_file = ui.home / "artifacts" / str(job_id) / "per_class_accuracy.csv"
    port = ui.local.port
    assert raw_get(port, f"/artifacts/{job_id}/per_class_accuracy.csv") == (200, csv_file.read_bytes())
    (ui.home / "artifacts" / str(other) / "leak.txt").symlink_to(secret)

    escapes = [
        f"/artifacts/{job_id}/../../secret.txt",
        f"/artifacts/{job_id}/../{other}/per_class_accuracy.csv",
        f"/artifacts/{job_id}/%2e%2e%2f%2e%2e%2fsecret.txt",
        f"/artifacts/{job_id}/%2E%2E%2F%2E%2E%2Fsecret.txt",
        f"/artifacts/{job_id}/..%2f..%2fsecret.txt",
        f"/artifacts/{job_id}/%2e%2e/%2e%2e/secret.txt",
        f"/artifacts/{job_id}/..%5c..%5csecret.txt",
        "/artifacts/../secret.txt",
        f"/artifacts/{job_id}/%2fetc%2fpasswd",
        f"/artifacts/{other}/leak.txt",
        "/artifacts/999999/per_class_accuracy.csv",
    ]
    answers = {path: raw_get(port, path) for path in escapes}
    assert {path: status for path, (status, _) in answers.items() if status != 404} == {}
    assert not [path for path, (_, body) in answers.items() if b"not for the web" in body or b"root:" in body]


def test_the_workers_page_lists_the_live_worker_and_the_jobs_page_shows_every_job(ui, tab, shots):
    page = tab.page
    page.goto(ui.url + "/workers")
    row = page.locator(f'table#workers tr[data-worker="{WORKER}"]')
    row.wait_for()
    names = page.eval_on_selector_all("table#workers tr[data-worker]", "rows => rows.map(r => r.dataset.worker)")
    assert sorted(names) == sorted(w["name"] for w in ui.client.workers())
    # Per queue, the jobs waiting and running; with none, a line that says so instead of an empty table.
    queues = page.request.get(ui.url + "/api/workers").json()["queues"]
    if queues:
        page.wait_for_selector("table#queues tr[data-queue]")
        assert page.locator("#no-queues").is_hidden()
    else:
        page.wait_for_selector("#no-queues", state="visible")
        assert page.locator("#no-queues").inner_text().strip() == "nothing queued or running"
        assert page.locator("table#queues").is_hidden()
    page.screenshot(path=shots / "workers.png", full_page=True)

    page.goto(ui.url + "/")
    page.wait_for_selector("table#jobs tr[data-job-id]")
    shown = page.eval_on_selector_all("table#jobs tr[data-job-id]", "rows => rows.map(r => +r.dataset.jobId)")
    newest = [job["id"] for job in ui.client.list_jobs(limit=len(shown))]
    assert shown == newest, "the jobs page is not newest first"
    page.screenshot(path=shots / "jobs.png", full_page=True)
