"""`tlq ui` in headless Chromium on a flaky footing: the server or its database going away and coming back (the
pages say so and recover by themselves), a job whose curves take long to thin (the page asks less often), and an
artifact name holding a right-to-left override (it turns only its own text around).

The dashboard runs in a thread of this process (``AppServer``), on the database ``build_setup`` fills.
"""

from __future__ import annotations

import contextlib
import shutil
import time

import pytest

from tests.support import ToggleProxy
from tests.ui.app_support import AppServer, build_setup, record_file

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
RTL_NAME = "\u202egnp.exe"  # shows as "exe.png"


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        executable = shutil.which("chromium") or CHROMIUM
        chromium = playwright.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    try:
        yield context.new_page()
    finally:
        context.close()


def wait_for_text(page, selector: str, wanted, timeout: float = 15) -> str:
    """The text of ``selector`` once ``wanted(text)`` holds; AssertionError with the last text otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        text = page.locator(selector).text_content() or ""
        if wanted(text):
            return text
        assert time.monotonic() < deadline, f"{selector}: {text!r}"
        page.wait_for_timeout(200)


@contextlib.contextmanager
def three_pages(browser, url: str, setup):
    """The job list, a job's page and the workers page, each in a tab of its own, closed afterwards."""
    pages = {}
    try:
        for path in ("/", f"/jobs/{setup.ids['d']}", "/workers"):
            pages[path] = browser.new_page()
            pages[path].goto(url + path)
        yield pages
    finally:
        for page in pages.values():
            page.close()


def test_pages_say_the_server_is_gone_and_clear_it_when_it_is_back(tmp_path, browser):
    from tlq.ui.app import create_app

    setup = build_setup(tmp_path)
    server = AppServer(create_app(setup.settings, token="")).start()
    try:
        with three_pages(browser, server.url, setup) as pages:
            rows = pages["/"].locator("#jobs tbody tr").count()
            server.stop()
            for path, page in pages.items():
                assert "no answer from tlq ui" in wait_for_text(page, "#error", bool), path
            assert pages["/"].locator("#jobs tbody tr").count() == rows  # the last rows stay while it is away
            server.start()
            for page in pages.values():
                wait_for_text(page, "#error", lambda text: text == "")
    finally:
        server.stop()


def test_pages_say_the_database_is_gone_without_its_password_and_recover(pg_url, tmp_path, browser):
    from urllib.parse import urlsplit

    from tlq.ui.app import create_app

    relay = ToggleProxy(5432).up()
    url = f"postgresql://postgres:Pw-S3cret-9@127.0.0.1:{relay.port}{urlsplit(pg_url).path}"
    setup = build_setup(tmp_path, database_url=url)
    server = AppServer(create_app(setup.settings, token="")).start()
    try:
        with three_pages(browser, server.url, setup) as pages:
            rows = pages["/"].locator("#jobs tbody tr").count()
            relay.down()
            for path, page in pages.items():
                text = wait_for_text(page, "#error", bool)
                assert text.startswith("cannot reach the database at postgresql+psycopg://postgres:***@"), (path, text)
                assert "Pw-S3cret-9" not in page.content()
            assert pages["/"].locator("#jobs tbody tr").count() == rows
            loaded = browser.new_page()  # a page opened meanwhile says so, then reloads itself
            assert loaded.goto(server.url + "/workers").status == 503
            relay.up()
            for page in pages.values():
                wait_for_text(page, "#error", lambda text: text == "")
            loaded.wait_for_url("**/workers", timeout=15_000)
            wait_for_text(loaded, "h1", lambda text: text == "Workers")
    finally:
        server.stop()
        relay.down()
        setup.env.db.engine.dispose()


def test_a_job_whose_curves_take_long_to_thin_is_asked_less_often(tmp_path, page, monkeypatch):
    """Thinning a million-row history takes seconds; polling it every second kept a core busy per open tab."""
    from tlq.client import dashboard
    from tlq.ui.app import create_app

    setup = build_setup(tmp_path)
    calls = []
    thin = dashboard.metric_series

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(1.0)
        return thin(*args, **kwargs)

    monkeypatch.setattr(dashboard, "metric_series", slow)
    server = AppServer(create_app(setup.settings, token="")).start()
    try:
        page.goto(f"{server.url}/jobs/{setup.ids['d']}")  # queued: its page polls
        page.wait_for_timeout(8500)
    finally:
        server.stop()
    # every 2 s (1 s answering, 1 s waiting) would be 4 or 5 calls; 3 x the answer's time between them, 3
    assert 2 <= len(calls) <= 3, [round(t - calls[0], 1) for t in calls]


def test_a_right_to_left_override_in_a_file_name_turns_only_the_name_around(tmp_path, page):
    from tlq.db import queries
    from tlq.ui.app import create_app

    setup = build_setup(tmp_path)
    with setup.env.db.session() as session:
        job = queries.create_job(session, task="finetune", backbone="vgg16", params={}, queue="cpu", name="rtl")
        record_file(session, setup.settings.artifacts_dir, job.id, RTL_NAME, "notes", b"rtl")
    server = AppServer(create_app(setup.settings, token="")).start()
    try:
        page.goto(f"{server.url}/jobs/{job.id}")
        item = page.locator("#files li").first
        boxes = [item.locator(part).bounding_box()["x"] for part in ("a", ".kind", ".bytes", "code.sha256")]
    finally:
        server.stop()
    assert boxes == sorted(boxes), boxes  # name, kind, size, sha256 from left to right, as for any other file
