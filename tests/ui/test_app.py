"""`tlq ui` on the server side (Starlette's TestClient, a real SQLite database): what each page and API route
shows, filters as the CLI filters, curves thinned on the database side, user text escaped, cancel and retry."""

from __future__ import annotations

import csv
import io
import re

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
    # one chart per metric, data-points = the points drawn = the rows (3 epochs, 1 train_images)
    charts = dict(re.findall(r'<div class="chart" data-metric="(\w+)" data-points="(\d+)"', page))
    assert charts == {"val_acc": "3", "val_loss": "3", "train_images": "1"}
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
    queued = sum(1 for k in setup.ids if k not in ("a", "b", "c"))
    assert workers["queues"] == [{"queue": "cpu", "queued": queued, "running": 0}]
    page = web.get("/workers").text
    assert 'id="workers"' in page and '<tr data-queue="cpu">' in page


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
