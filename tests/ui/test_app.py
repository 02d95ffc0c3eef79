"""`tlq ui` on the server side (Starlette's TestClient, a real SQLite database): what each page and API route
shows, filters as the CLI filters, curves thinned on the database side, user text escaped, cancel and retry."""

from __future__ import annotations

import csv
import io
import re
from types import SimpleNamespace

import pytest
from starlette.testclient import TestClient

from tests.ui.app_support import CSV_TEXT, LONG_HISTORY, XSS_NAME, XSS_TAG, build_setup


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return build_setup(tmp_path_factory.mktemp("ui-app"))


@pytest.fixture(scope="module")
def web(setup):
    """The dashboard without a token, as `tlq ui` serves it on 127.0.0.1; holds a CSRF cookie from a page."""
    from tlq.ui.app import create_app

    with TestClient(create_app(setup.settings, token=""), base_url="http://127.0.0.1") as client:
        assert client.get("/").status_code == 200
        yield client


def csrf(web) -> dict[str, str]:
    return {"X-CSRF-Token": web.cookies["tlq_csrf"]}


# --- the jobs page and /api/jobs --------------------------------------------------------------------------------


def test_the_jobs_api_lists_newest_first_with_the_contracts_fields(web, setup):
    data = web.get("/api/jobs").json()
    ids = [job["id"] for job in data["jobs"]]
    assert ids == sorted(setup.ids.values(), reverse=True)
    assert (data["page"], data["per_page"], data["total"]) == (1, 50, len(setup.ids))
    job = next(job for job in data["jobs"] if job["id"] == setup.ids["a"])
    contract = {"id", "task", "backbone", "name", "tags", "status", "progress", "headline", "worker", "created_at"}
    assert contract | {"started_at", "finished_at"} <= set(job)
    assert set(job["progress"]) == {"current", "total", "stage"}
    # finetune's headline is val_acc; job a ended at 0.88 (tests.support.RESULT_RUNS)
    assert job["headline"] == {"name": "val_acc", "value": 0.88}


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("status=succeeded", {"a", "b", "c"}),
        ("backbone=resnet50", {"c", "d"}),
        ("tag=dataset=pets", {"a", "b"}),
        ("where=val_acc > 0.9", {"c"}),
        ("where=val_acc > 0.8&backbone=vgg16", {"a", "b"}),
        ("task=predict", set()),
        ("tag=dataset=pets&tag=note=x", set()),  # every tag must match, as with `tlq jobs --tag`
    ],
)
def test_the_jobs_api_filters_as_the_cli_does(web, setup, query, names):
    by_id = {v: k for k, v in setup.ids.items()}
    shown = {by_id[job["id"]] for job in web.get(f"/api/jobs?{query}").json()["jobs"]}
    assert shown == names


def test_pages_of_jobs_split_the_list_and_count_all_of_it(web, setup):
    first = web.get("/api/jobs?per_page=3").json()
    second = web.get("/api/jobs?per_page=3&page=2").json()
    assert first["total"] == second["total"] == len(setup.ids)
    assert len(first["jobs"]) == 3 and not {j["id"] for j in first["jobs"]} & {j["id"] for j in second["jobs"]}
    page = web.get("/?per_page=3&page=2&status=").text
    assert 'id="prev" href="/?page=1"' in page and 'id="next" href="/?page=3"' in page


def cli_where_error(home, where: str) -> str:
    from click.testing import CliRunner

    from tlq.cli.main import cli

    result = CliRunner().invoke(cli, ["--home", str(home), "results", "--where", where])
    assert result.exit_code == 2
    (line,) = result.stderr.splitlines()
    return line.removeprefix("Error: ")


def test_a_malformed_where_answers_400_with_the_clis_one_line_message(web, setup):
    where = "status = = 'queued'"
    expected = cli_where_error(setup.settings.home, where)
    assert expected.startswith("--where: ") and "column 10" in expected
    answer = web.get("/api/jobs", params={"where": where})
    assert answer.status_code == 400 and answer.json() == {"error": expected}
    page = web.get("/", params={"where": where})
    assert page.status_code == 400
    shown = re.search(r'<div id="error" role="alert">(.*?)</div>', page.text, re.S).group(1)
    assert shown == expected.replace("'", "&#39;").replace(">", "&gt;")  # escaped, and one line
    assert re.search(r'<div id="error" role="alert"></div>', web.get("/").text)  # empty when all is well
    bad_tag = web.get("/api/jobs?tag=pets")
    assert bad_tag.status_code == 400 and "--tag 'pets' is not KEY=VALUE" in bad_tag.json()["error"]
    assert web.get("/api/jobs?group=x").json() == {"error": "group='x' is not a whole number"}


def test_the_jobs_page_renders_the_contracts_table(web, setup):
    page = web.get("/").text
    a = setup.ids["a"]
    row = re.search(rf'<tr data-job-id="{a}">(.*?)</tr>', page, re.S).group(1)
    for cell in ("id", "status", "task", "backbone", "name", "tags", "progress", "headline", "worker", "created"):
        assert f'<td class="{cell}"' in row, cell
    assert f'<input type="checkbox" class="pick" value="{a}"' in row and f'href="/jobs/{a}"' in row
    assert re.search(r'<td class="status" data-status="succeeded">succeeded</td>', row)
    assert 'id="filters"' in page and 'id="where" name="where"' in page and 'id="compare"' in page
    for name in ("status", "task", "backbone", "tag", "group"):
        assert f'name="{name}"' in page


# --- user text is escaped ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/jobs/{xss}", "/compare?jobs={xss},{a}"])
def test_a_job_named_like_markup_is_shown_as_text(web, setup, path):
    page = web.get(path.format(**setup.ids)).text
    assert XSS_NAME not in page and XSS_TAG not in page
    if "compare" not in path:  # the leaderboard shows no names
        assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "<script>" not in page.replace('<script src="/static/', "")  # no script but the page's own files


def test_the_api_returns_user_text_as_json_strings_for_the_scripts_to_set_as_text(web, setup):
    job = web.get(f"/api/jobs/{setup.ids['xss']}").json()
    assert job["name"] == XSS_NAME and job["tags"] == {"note": XSS_TAG}
    scripts = "".join(web.get(f"/static/{name}.js").text for name in ("tlq", "jobs", "job", "compare", "workers"))
    assert "innerHTML =" not in scripts and "insertAdjacentHTML" not in scripts and "outerHTML" not in scripts


# --- one job ----------------------------------------------------------------------------------------------------


def test_the_job_page_shows_parameters_lineage_attempts_curves_and_artifacts(web, setup):
    a = setup.ids["a"]
    page = web.get(f"/jobs/{a}").text
    assert re.search(rf'<h1 id="job-title">Job {a}: a</h1>', page)
    assert '<span id="status" data-status="succeeded">succeeded</span>' in page
    assert 'id="params"' in page and 'data-param="lr"' in page
    for part in ('id="lineage"', 'id="attempts"', 'id="job-error"', 'id="cancel"', 'id="retry"'):
        assert part in page
    assert '<div id="job-error-section" hidden>' in page  # it succeeded: no empty "Error" heading
    # a chart per scale, none of its points drawn yet (the script draws them), its metrics' rows in the same
    # order (3 epochs); train_images, recorded once, is a value in the table above the charts
    charts = re.findall(r'<div class="chart" data-metric="([\w,]+)" data-points="([\d,]+)" data-rows="([\d,]+)"', page)
    assert charts == [("train_acc,val_acc", "0,0", "3,3"), ("train_loss,val_loss", "0,0", "3,3")]
    scalars = re.findall(
        r'<tr data-metric="(\w+)"><th>\w+</th><td class="value" data-value="([^"]+)">([^<]*)</td>', page
    )
    assert scalars == [("train_images", "100.0", "100")]
    assert page.index('<table id="scalars">') < page.index('<div id="charts">')
    assert f'<img class="artifact" src="/artifacts/{a}/curves.png"' in page
    # the CSV's header in thead and its first 20 rows
    table = re.search(r'<table class="csv-preview" data-name="per_class_accuracy.csv">(.*?)</table>', page, re.S)
    rows = list(csv.reader(io.StringIO(CSV_TEXT)))
    head = re.findall(r"<th>(.*?)</th>", re.search(r"<thead>(.*?)</thead>", table.group(1), re.S).group(1))
    body = re.findall(r"<tr>(.*?)</tr>", re.search(r"<tbody>(.*?)</tbody>", table.group(1), re.S).group(1), re.S)
    assert head == rows[0] and len(body) == 20 and re.findall(r"<td>(.*?)</td>", body[0]) == rows[1]
    files = re.search(r'<ul id="files">(.*?)</ul>', page, re.S).group(1)
    for name, path in setup.files.items():
        rel = path.relative_to(setup.settings.artifacts_dir / str(a)).as_posix()
        assert f'<a download href="/artifacts/{a}/{rel}">' in files, name
    import hashlib

    assert hashlib.sha256(CSV_TEXT.encode()).hexdigest() in files
    assert "INFO &lt;b&gt;epoch&lt;/b&gt; 1" in re.search(r'<pre id="log">(.*?)</pre>', page, re.S).group(1)


def test_a_failed_jobs_page_shows_its_error_and_a_page_without_metrics_says_so(web, setup):
    page = web.get(f"/jobs/{setup.ids['long']}").text
    section = re.search(r'<div id="job-error-section">\s*<h2>Error</h2>\s*<pre id="job-error">(.*?)</pre>', page, re.S)
    assert section and section.group(1) == "RuntimeError: &lt;b&gt;CUDA&lt;/b&gt; out of memory"
    assert '<p class="none" id="no-metrics" hidden>' in page
    empty = web.get(f"/jobs/{setup.ids['d']}").text  # queued, nothing recorded yet
    assert '<p class="none" id="no-metrics">no metrics yet</p>' in empty and '<table id="scalars" hidden>' in empty
    assert '<div class="chart"' not in empty


@pytest.mark.parametrize(
    ("points", "layout"),
    [
        ({}, {"scalars": [], "charts": []}),
        (
            {"val_acc": 3, "train_acc": 3, "val_loss": 3, "train_loss": 3, "loss": 9, "lr": 3, "classes": 1},
            {"scalars": ["classes"], "charts": [["loss", "train_loss", "val_loss"], ["train_acc", "val_acc"], ["lr"]]},
        ),
        # once recorded, a metric is a value, not a chart, and joins no chart until it has a history
        (
            {"val_acc": 1, "train_acc": 2, "best_val_acc": 1},
            {"scalars": ["best_val_acc", "val_acc"], "charts": [["train_acc"]]},
        ),
        # the part after the first underscore, or a name without one: val_loss and loss share a chart
        (
            {"a_b_c": 2, "x_b_c": 2, "b_c": 2, "c": 2, "d": 2},
            {"scalars": [], "charts": [["a_b_c", "x_b_c"], ["b_c", "c"], ["d"]]},
        ),
    ],
)
def test_metrics_that_share_a_scale_share_a_chart_and_single_values_are_no_chart(points, layout):
    from tlq.client.dashboard import metric_layout

    assert metric_layout(points) == layout


def test_a_job_page_and_its_poll_read_no_metric_history(web, setup):
    """The page and /api/jobs/ID read the job's row, the latest value of each metric and how many rows each has:
    no statement answers more than a few rows for the ``long`` job, whose loss has 5,000 (only /metrics reads the
    history, thinned)."""
    from sqlalchemy import event

    engine = web.app.state.client.env.db.engine
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        assert web.get(f"/jobs/{setup.ids['long']}").status_code == 200
        assert web.get(f"/api/jobs/{setup.ids['long']}").status_code == 200
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    selects = [(sql, params) for sql, params in statements if sql.lstrip().upper().startswith("SELECT")]
    with engine.connect() as conn:
        answered = {sql: len(conn.exec_driver_sql(sql, params).all()) for sql, params in selects}
    assert any("FROM metrics" in sql for sql in answered), "the page read no metric at all"
    assert max(answered.values()) < 20, {sql[:200]: rows for sql, rows in answered.items() if rows >= 20}


def test_the_job_api_adds_children_and_keeps_tlq_shows_fields(web, setup):
    from tlq.client import Client

    a = setup.ids["a"]
    shown = Client(settings=setup.settings).get(a)
    job = web.get(f"/api/jobs/{a}").json()
    assert {k: v for k, v in job.items() if k != "children"} == shown and job["children"] == []
    assert web.get("/api/jobs/99999").status_code == 404 and web.get("/jobs/99999").status_code == 404


def test_artifacts_api_lists_each_file_with_its_url_and_digest(web, setup):
    a = setup.ids["a"]
    listed = {f["name"]: f for f in web.get(f"/api/jobs/{a}/artifacts").json()}
    assert set(listed) >= {"curves.png", "per_class_accuracy.csv", "job.log", "sub/notes.txt"}
    csv_entry = listed["per_class_accuracy.csv"]
    assert csv_entry["url"] == f"/artifacts/{a}/per_class_accuracy.csv" and csv_entry["bytes"] == len(CSV_TEXT)
    served = web.get(csv_entry["url"])
    assert served.status_code == 200 and served.content == CSV_TEXT.encode()
    assert served.headers["content-security-policy"].startswith("sandbox")
    assert web.get(listed["sub/notes.txt"]["url"]).content == b"nested notes"
    png = web.get(listed["curves.png"]["url"])
    assert png.headers["content-type"] == "image/png" and png.content[:4] == b"\x89PNG"
    assert web.get(f"/api/jobs/{a}/log").json() == {"log": "INFO started\nINFO <b>epoch</b> 1\n", "truncated": False}
    assert web.get(f"/api/jobs/{setup.ids['b']}/log").json()["log"] is None


# --- curves -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_points", [2, 3, 100, 1000, 4999, 5000, 20000])
def test_long_histories_are_thinned_to_max_points_keeping_first_and_last(web, setup, max_points):
    metrics = web.get(f"/api/jobs/{setup.ids['long']}/metrics?max_points={max_points}").json()["metrics"]
    loss = metrics["loss"]
    assert loss["points"] == LONG_HISTORY
    drawn = len(loss["steps"])
    assert drawn == len(loss["values"]) and drawn <= max_points
    assert drawn == LONG_HISTORY if max_points >= LONG_HISTORY else drawn >= max_points // 2  # thinned evenly
    assert loss["steps"][0] == 0 and loss["steps"][-1] == LONG_HISTORY - 1
    assert loss["steps"] == sorted(set(loss["steps"]))
    assert all(value == 1.0 / (step + 1) for step, value in zip(loss["steps"], loss["values"], strict=True))
    assert metrics["val_acc"] == {"steps": [1], "values": [0.5], "points": 1}


def test_the_metrics_api_says_which_metrics_are_single_values_and_which_share_a_chart(web, setup):
    answer = web.get(f"/api/jobs/{setup.ids['a']}/metrics").json()
    assert answer["scalars"] == ["train_images"]
    assert answer["charts"] == [["train_acc", "val_acc"], ["train_loss", "val_loss"]]
    assert set(answer["metrics"]) == {"train_images", "train_acc", "val_acc", "train_loss", "val_loss"}
    long = web.get(f"/api/jobs/{setup.ids['long']}/metrics?max_points=10").json()
    assert (long["scalars"], long["charts"]) == (["val_acc"], [["loss"]])


def test_the_job_api_has_each_metrics_latest_value_in_the_order_they_first_appear(web, setup):
    metrics = web.get(f"/api/jobs/{setup.ids['long']}").json()["metrics"]
    assert list(metrics.items()) == [("loss", 1.0 / LONG_HISTORY), ("val_acc", 0.5)]
    a = web.get(f"/api/jobs/{setup.ids['a']}").json()["metrics"]
    assert list(a) == ["train_images", "val_acc", "val_loss", "train_acc", "train_loss"]
    assert a == {"train_images": 100, "val_acc": 0.88, "val_loss": 0.35, "train_acc": 0.95, "train_loss": 0.2}


SPIKY = 100_000  # rows of the history of ``spiky``: a smooth decay, a spike up at SPIKE and one down at DIP
SPIKE, DIP = 31_337, 77_777


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def spiky(request, tmp_path_factory):
    """A database (SQLite, then PostgreSQL: the thinning is SQL) holding one job whose metric ``loss`` has SPIKY
    rows, steps 0 to SPIKY - 1."""
    import contextlib

    from sqlalchemy import insert

    from tests.support import postgres_database
    from tlq.db import Database, queries
    from tlq.db.models import Metric

    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path_factory.mktemp('spiky') / 'tlq.sqlite'}"
        else:
            request.getfixturevalue("services")
            url = stack.enter_context(postgres_database())
        database = Database(url)
        stack.callback(database.dispose)
        database.ensure_schema()
        with database.session() as session:
            job_id = queries.create_job(session, task="finetune", backbone="vgg16", params={}, queue="cpu").id
            values = {step: 2.0 / (1 + step / 1000) for step in range(SPIKY)} | {SPIKE: 50.0, DIP: -50.0}
            for first in range(0, SPIKY, 20_000):
                rows = [
                    {"job_id": job_id, "name": "loss", "step": step, "value": values[step]}
                    for step in range(first, first + 20_000)
                ]
                session.execute(insert(Metric), rows)
        yield SimpleNamespace(db=database, job_id=job_id, values=values)


@pytest.mark.parametrize("max_points", [2, 3, 4, 5, 100, 1000, 4001])
def test_thinning_keeps_each_buckets_lowest_and_highest_point_so_spikes_stay(spiky, max_points):
    from tlq.db import queries
    from tlq.db.dashboard import metric_series

    with spiky.db.read_session() as session:
        loss = metric_series(session, [spiky.job_id], max_points)[spiky.job_id]["loss"]
        assert queries.last_metrics(session, spiky.job_id) == {"loss": spiky.values[SPIKY - 1]}
    steps = loss["steps"]
    assert loss["points"] == SPIKY and len(steps) <= max_points and len(steps) == len(loss["values"])
    assert steps[0] == 0 and steps[-1] == SPIKY - 1 and steps == sorted(set(steps))
    assert loss["values"] == [spiky.values[step] for step in steps]
    if max_points >= 4:  # room for a bucket besides the first and last point
        assert SPIKE in steps and DIP in steps, "a spike was thinned away"
        assert len(steps) >= max_points - 3  # nearly every point the budget allows is used
    else:
        assert steps == [0, SPIKY - 1]


def test_the_default_keeps_at_most_1000_points_and_a_bad_max_points_is_400(web, setup):
    loss = web.get(f"/api/jobs/{setup.ids['long']}/metrics").json()["metrics"]["loss"]
    assert 500 <= len(loss["steps"]) <= 1000
    assert web.get(f"/api/jobs/{setup.ids['long']}/metrics?max_points=x").status_code == 400
    assert web.get(f"/api/jobs/{setup.ids['long']}/metrics?max_points=1").status_code == 400


# --- compare, results, workers ----------------------------------------------------------------------------------


def test_compare_ranks_as_tlq_compare_and_the_page_follows_that_order(web, setup):
    from tlq.client import Client

    ids = [setup.ids[k] for k in ("a", "b", "c")]
    expected = Client(settings=setup.settings).compare(jobs=ids)
    assert web.get("/api/compare", params={"jobs": ",".join(map(str, ids))}).json() == expected
    page = web.get("/compare", params={"jobs": ",".join(map(str, ids))}).text
    board = re.search(r'<table id="leaderboard">(.*?)</table>', page, re.S).group(1)
    assert [int(i) for i in re.findall(r'<tr data-job-id="(\d+)"', board)] == [row["job"] for row in expected]
    assert '<th class="param" data-param="lr">' in board  # the parameter that differs
    assert re.search(r'<div class="chart" data-metric="val_acc" data-points="8"', page)  # 3 + 3 + 2 points
    assert web.get("/api/compare").status_code == 400
    assert web.get("/api/compare?group=77").status_code == 400
    assert web.get("/groups/77").status_code == 404


def test_results_and_workers_answer_as_the_cli_prints(web, setup):
    found = web.get("/api/results", params={"where": "val_acc > 0.9"}).json()
    assert [job["id"] for job in found] == [setup.ids["c"]] and "waiting" in found[0]
    assert web.get("/api/results", params={"where": "val_acc >"}).status_code == 400
    workers = web.get("/api/workers").json()
    assert workers["workers"] == []
    queued = sum(1 for k in setup.ids if k not in ("a", "b", "c", "long"))
    assert workers["queues"] == [{"queue": "cpu", "queued": queued, "running": 0}]
    page = web.get("/workers").text
    assert 'id="workers"' in page and '<tr data-queue="cpu">' in page
    assert '<p id="no-queues" class="none" hidden>' in page and '<table id="queues">' in page


def test_the_workers_page_says_nothing_is_queued_rather_than_show_an_empty_table(tmp_path):
    from tlq.config import Settings
    from tlq.ui.app import create_app

    settings = Settings.load(home=tmp_path / "home", environ={})
    with TestClient(create_app(settings, token=""), base_url="http://127.0.0.1") as empty:
        page = empty.get("/workers").text
        assert empty.get("/api/workers").json() == {"workers": [], "queues": []}
    assert '<p id="no-queues" class="none">nothing queued or running</p>' in page
    assert '<table id="queues" hidden>' in page and "<tr data-queue" not in page


# --- writes -----------------------------------------------------------------------------------------------------


def test_cancel_a_queued_job_and_retry_makes_its_child(web, setup):
    from tlq.client import Client

    client = Client(settings=setup.settings)
    job_id = setup.ids["retryable"]
    answer = web.post(f"/api/jobs/{job_id}/cancel", headers=csrf(web))
    assert answer.status_code == 200 and answer.json() == {"status": "cancelled"}
    assert client.get(job_id)["status"] == "cancelled"
    retried = web.post(f"/api/jobs/{job_id}/retry", headers=csrf(web))
    assert retried.status_code == 200, retried.text
    child = retried.json()["id"]
    assert client.get(child)["parent_id"] == job_id and client.get(child)["status"] == "queued"
    assert web.get(f"/api/jobs/{job_id}").json()["children"] == [child]
    assert f'<a class="child" href="/jobs/{child}">' in web.get(f"/jobs/{job_id}").text
    assert f'<a class="parent" href="/jobs/{job_id}">' in web.get(f"/jobs/{child}").text
    assert web.post(f"/api/jobs/{child}/cancel", headers=csrf(web)).json() == {"status": "cancelled"}
    assert web.post("/api/jobs/99999/cancel", headers=csrf(web)).status_code == 404


def test_a_retry_that_cannot_work_is_400_with_the_reason(web, setup):
    answer = web.post(f"/api/jobs/{setup.ids['d']}/retry", headers=csrf(web))  # its data, ./pets, is not there
    assert answer.status_code == 400 and "pets" in answer.json()["error"]
