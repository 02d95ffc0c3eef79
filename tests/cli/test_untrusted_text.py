"""Text that users and plugins put into jobs (names, paths, params, tags, errors, metric names) is printed as it
is: rich never reads it as markup (a stray ``[/x]`` used to crash `tlq jobs`) or restyles it."""

from __future__ import annotations

import datetime as dt

import pytest

from tests.cli.test_commands import invoke
from tlq.config import Settings
from tlq.db import Database, JobStatus, queries

BROKEN = "[/x]"  # a closing tag with nothing to close: rich raises MarkupError
STYLED = "[bold red]x[/]"  # valid markup: rich would print a red "x" and drop the brackets
EMOJI = ":thumbs_up:"  # rich would print an emoji


@pytest.fixture
def marked(home):
    """Two finished jobs whose user-supplied text is all markup; returns their ids."""
    database = Database(Settings.load(home=home, environ={}).database_url)
    database.ensure_schema()
    start = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    ids = []
    with database.session() as session:
        for n, (status, error) in enumerate(((JobStatus.SUCCEEDED, None), (JobStatus.FAILED, f"boom {BROKEN}"))):
            job = queries.create_job(
                session,
                task="finetune",
                backbone=f"vgg{n}{BROKEN}",
                params={"data": f"./pets{BROKEN}", "lr": f"{STYLED}{n}", "note": EMOJI},
                tags={f"set{BROKEN}": STYLED},
                queue="cpu",
                name=f"run{n}{STYLED}",
            )
            job.status = status.value
            job.error = error
            job.created_at = job.started_at = start
            job.finished_at = start + dt.timedelta(seconds=30)
            queries.record_metric(session, job.id, "val_acc", 0.5 + n / 10, step=1, epoch=1)
            queries.record_metric(session, job.id, f"loss{BROKEN}", 1.0, step=1, epoch=1)
            ids.append(job.id)
    database.dispose()
    return ids


def assert_literal(result, *texts):
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    for text in texts:
        assert text in result.stdout, f"{text!r} not printed as is in:\n{result.stdout}"


def test_jobs_prints_markup_in_backbones_and_errors_as_is(home, marked):
    assert_literal(invoke(home, "jobs", COLUMNS="200"), f"vgg0{BROKEN}", f"vgg1{BROKEN}", f"boom {BROKEN}")


def test_show_prints_markup_in_every_field_as_is(home, marked):
    ok, failed = marked
    assert_literal(
        invoke(home, "show", ok, COLUMNS="200"),
        f"on vgg0{BROKEN}",
        f"run0{STYLED}",
        f"./pets{BROKEN}",
        f"{STYLED}0",
        EMOJI,
        f"set{BROKEN}={STYLED}",
        f"loss{BROKEN}=1",
    )
    assert_literal(invoke(home, "show", failed, COLUMNS="200"), f"boom {BROKEN}", f"vgg1{BROKEN}")


def test_results_and_compare_print_markup_as_is(home, marked):
    varying = (f"vgg0{BROKEN}", f"vgg1{BROKEN}", f"{STYLED}0", f"{STYLED}1")
    assert_literal(invoke(home, "results", COLUMNS="200"), *varying)
    assert_literal(invoke(home, "compare", *marked, COLUMNS="200"), *varying)
    named = invoke(home, "compare", *marked, "--metric", f"loss{BROKEN}", COLUMNS="200")
    assert_literal(named, f"loss{BROKEN} leaderboard", f"vgg0{BROKEN}")
    assert_literal(invoke(home, "metrics", marked[0], COLUMNS="200"), f"loss{BROKEN}")


FORMULA = '=HYPERLINK("http://x")'


@pytest.fixture
def formulas(home):
    """Two finished jobs whose text starts spreadsheet formulas, and whose numbers are negative; returns ids."""
    database = Database(Settings.load(home=home, environ={}).database_url)
    database.ensure_schema()
    ids = []
    with database.session() as session:
        for n in range(2):
            job = queries.create_job(
                session,
                task="finetune",
                backbone="@SUM(1)",
                params={"data": FORMULA, "lr": -0.5 - n, "shift": "-0.5", "cmd": f"+cmd{n}", "tab": "\t=1"},
                tags={"set": "-2+3"},
                queue="cpu",
                name=f"run{n}",
            )
            job.status = JobStatus.SUCCEEDED.value
            queries.record_metric(session, job.id, "val_acc", -0.25 * n, step=1, epoch=1)
            queries.record_metric(session, job.id, "=cost", 1.0, step=1, epoch=1)
            ids.append(job.id)
    database.dispose()
    return ids


def read_csv(result) -> list[dict[str, str]]:
    import csv
    import io

    assert result.exit_code == 0, result.output
    return list(csv.DictReader(io.StringIO(result.stdout)))


def test_csv_outputs_neutralize_formulas_and_keep_numbers(home, formulas):
    (first, *_) = read_csv(invoke(home, "results", "--order-by", "id", "--csv"))
    assert first["params.data"] == "'" + FORMULA
    assert first["params.cmd"] == "'+cmd0" and first["params.tab"] == "'\t=1" and first["tags.set"] == "'-2+3"
    assert first["backbone"] == "'@SUM(1)"
    assert "'=cost" in first and first["'=cost"] == "1"  # a header cell is text too; 1.0 written "1"
    assert float(first["params.lr"]) == -0.5 and first["params.shift"] == "-0.5"  # numbers stay numbers
    rows = read_csv(invoke(home, "compare", *formulas, "--csv"))
    assert [r["backbone"] for r in rows] == ["'@SUM(1)"] * 2
    assert sorted(float(r["params.lr"]) for r in rows) == [-1.5, -0.5]
    assert sorted(r["params.cmd"] for r in rows) == ["'+cmd0", "'+cmd1"]
    assert sorted(float(r["final"]) for r in rows) == [-0.25, 0.0]
    history = read_csv(invoke(home, "metrics", formulas[1], "--csv"))
    assert {(r["name"], float(r["value"])) for r in history} == {("'=cost", 1.0), ("val_acc", -0.25)}
