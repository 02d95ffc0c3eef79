"""What people read in tables and errors: job names, empty cells instead of None, counts as integers, a
suggestion for a mistyped command, and `--where` on metrics nobody has recorded yet."""

from __future__ import annotations

import csv
import io
import json

import pytest

from tests.cli.test_commands import invoke as invoke_cli
from tests.support import populate_results, run_tlq, tlq_env
from tlq.config import Settings
from tlq.db import Database, queries
from tlq.db.models import JobStatus

# name: (params, tags, metrics recorded once each)
JOBS = {
    "Pets baseline": ({"data": "./pets", "lr": 0.001, "batch_size": None}, {"team": None}, {"images": 120}),
    "pets_lr-sweep": ({"data": "./pets", "lr": 0.0001, "batch_size": 32}, {"team": "x"}, {"images": 120.5}),
    "digits 100%": ({"data": "./digits", "lr": 0.001, "batch_size": 32}, {}, {"images": 40, "skipped": 0}),
}


def invoke(home, *args, **env):
    """The CLI on a terminal wide enough for every column (rich fits tables to COLUMNS, 80 when unset)."""
    return invoke_cli(home, *args, **({"COLUMNS": "200"} | env))


@pytest.fixture
def named(home) -> dict[str, int]:
    """A TLQ_HOME whose database holds the JOBS, succeeded; returns name -> id."""
    database = Database(Settings.load(home=home, environ={}).database_url)
    ids = {}
    with database.session() as session:
        for name, (params, tags, metrics) in JOBS.items():
            job = queries.create_job(
                session, task="finetune", backbone="resnet18", params=params, tags=tags, queue="cpu", name=name
            )
            job.status = JobStatus.SUCCEEDED.value
            queries.record_metrics(session, job.id, metrics)
            ids[name] = job.id
    database.dispose()
    return ids


def rows_of(table: str) -> dict[str, list[str]]:
    """A printed table's rows by their first cell, split on runs of two or more spaces."""
    import re

    return {cells[0]: cells for line in table.splitlines() if (cells := re.split(r"\s{2,}", line.strip()))}


def test_jobs_filters_on_part_of_the_name_in_any_case_and_shows_it(home, named):
    def names(*args):
        return [job["name"] for job in json.loads(invoke(home, "jobs", *args, "--json").stdout)]

    assert names("--name", "PETS") == ["pets_lr-sweep", "Pets baseline"]
    assert names("--name", "lr-s") == ["pets_lr-sweep"]
    assert names("--name", "_") == ["pets_lr-sweep"]  # LIKE's wildcards are plain characters
    assert names("--name", "100%") == ["digits 100%"]
    assert names("--name", "cats") == []
    table = invoke(home, "jobs", "--name", "pets").stdout
    header, *lines = table.strip().splitlines()
    assert header.split()[:5] == ["ID", "TASK", "BACKBONE", "NAME", "STATUS"]
    assert [line.split()[0] for line in lines] == [str(named["pets_lr-sweep"]), str(named["Pets baseline"])]
    assert "Pets baseline" in table and "digits" not in table


def test_tables_leave_missing_values_empty_never_none(home, named):
    results = invoke(home, "results").stdout
    compare = invoke(home, "compare", *named.values(), "--metric", "images").stdout
    shown = invoke(home, "show", named["Pets baseline"]).stdout
    for text in (results, compare, shown):
        assert "None" not in text and "null" not in text.replace('"batch_size": null', "")
    row = rows_of(results)[str(named["Pets baseline"])]
    assert row == [str(named["Pets baseline"]), "finetune", "resnet18", "succeeded", "./pets", "0.001"]  # no batch
    assert rows_of(results)[str(named["pets_lr-sweep"])][4:7] == ["./pets", "0.0001", "32"]
    assert "tags      team=\n" in shown


def test_counts_print_as_integers_and_json_keeps_the_stored_number(home, named):
    baseline, sweep = named["Pets baseline"], named["pets_lr-sweep"]
    assert "metrics: images=120\n" in invoke(home, "show", baseline).stdout
    assert "images=120.5" in invoke(home, "show", sweep).stdout
    table = {int(r["id"]): r for r in csv.DictReader(io.StringIO(invoke(home, "results", "--csv").stdout))}
    assert (table[baseline]["images"], table[sweep]["images"]) == ("120", "120.5")
    assert table[named["digits 100%"]]["skipped"] == "0"
    assert "120.0" not in invoke(home, "metrics", baseline).stdout
    assert json.loads(invoke(home, "show", baseline, "--json").stdout)["metrics"]["images"] == 120


def test_a_mistyped_command_gets_a_suggestion_in_one_line(home):
    env = tlq_env(home)
    result = run_tlq(["sbumit", "finetune"], env, check=False)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "Error: No such command 'sbumit'. Did you mean 'submit'? (see `tlq --help`)\n"
    assert "Did you mean 'results'?" in run_tlq(["resuts"], env, check=False).stderr
    unknown = run_tlq(["xyzzy"], env, check=False)
    assert unknown.returncode == 2 and unknown.stderr == "Error: No such command 'xyzzy'. (see `tlq --help`)\n"


def test_where_on_a_fresh_database_finds_nothing_rather_than_failing(home):
    for where in ("val_acc > 0.9", "metrics.val_acc > 0.9", "top5_acc >= 0.5 and status = 'succeeded'"):
        result = invoke(home, "results", "--where", where)
        assert result.exit_code == 0 and result.stderr == "no jobs match\n", where
        assert json.loads(invoke(home, "results", "--where", where, "--json").stdout) == []
    typo = invoke(home, "results", "--where", "backbon = 'vgg16'")
    assert typo.exit_code == 2
    assert (
        typo.stderr
        == "Error: --where: unknown name 'backbon': did you mean backbone? at column 1: -->backbon = 'vgg16'\n"
    )


def test_where_takes_mlflow_metric_names_and_hints_at_typos(home):
    database = Database(Settings.load(home=home, environ={}).database_url)
    ids = populate_results(database)
    database.dispose()

    def found(where):
        return [job["name"] for job in json.loads(invoke(home, "results", "--where", where, "--json").stdout)]

    assert found("metrics.val_acc > 0.87") == found("val_acc > 0.87") == ["c", "a"]
    assert found("metrics.val_acc5 > 0.5") == []  # a metric no job recorded: nothing, not an error
    table = invoke(home, "results", "--where", "metrics.val_acc > 0.87").stdout
    assert "val_acc" in table.splitlines()[0] and "0.95" in rows_of(table)[str(ids["c"])]
    typo = invoke(home, "results", "--where", "val_ac > 0.9")
    assert typo.exit_code == 2 and typo.stderr.count("\n") == 1
    assert "did you mean val_acc?" in typo.stderr and "write metrics.val_ac)" in typo.stderr
