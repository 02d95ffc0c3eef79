"""`tlq results`, `compare`, `metrics`, `plot` and `artifacts` over a database of known results."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from tests.cli.test_commands import invoke
from tests.support import populate_results, tree
from tlq.config import Settings
from tlq.db import Database


@pytest.fixture
def filled(home):
    """A TLQ_HOME whose database holds the RESULT_RUNS jobs; returns name -> job id."""
    database = Database(Settings.load(home=home, environ={}).database_url)
    ids = populate_results(database)
    database.dispose()
    return ids


def test_compare_json_and_csv_agree_and_rank_best_first(home, filled):
    ids = [filled[n] for n in "abcd"]
    rows = json.loads(invoke(home, "compare", *ids, "--json").stdout)
    assert [r["job"] for r in rows] == [filled["c"], filled["a"], filled["b"], filled["d"]]
    assert set(rows[0]) >= {"job", "backbone", "params", "best", "final", "epochs", "seconds", "status"}
    assert [r["best_run"] for r in rows] == [True, False, False, False]
    assert rows[1]["params"] == {"lr": 0.001, "strategy": "full"}
    table = list(csv.DictReader(io.StringIO(invoke(home, "compare", *ids, "--csv").stdout)))
    assert [int(r["job"]) for r in table] == [r["job"] for r in rows]
    for parsed, row in zip(table, rows, strict=True):
        for key in ("best", "final", "seconds"):
            assert (float(parsed[key]) if parsed[key] else None) == row[key]
        assert float(parsed["params.lr"]) == row["params"]["lr"]
    human = invoke(home, "compare", *ids).stdout
    assert "★" in human and "val_acc leaderboard" in human and "higher is better" in human
    losses = json.loads(invoke(home, "compare", *ids, "--metric", "val_loss", "--json").stdout)
    assert losses[0]["job"] == filled["c"] and losses[0]["best"] == 0.15


def test_results_filters_orders_and_round_trips(home, filled):
    where = "val_acc > 0.8 and params.lr >= 1e-4"
    data = json.loads(invoke(home, "results", "--where", where, "--order-by", "-val_acc", "--json").stdout)
    assert [j["name"] for j in data] == ["c", "a", "b"]
    assert set(data[0]) >= {"id", "task", "status", "params", "metrics", "artifacts"}  # as `tlq show --json`
    text = invoke(home, "results", "--where", where, "--order-by", "-val_acc", "--csv").stdout
    table = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["id"]) for r in table] == [j["id"] for j in data]
    assert [float(r["val_acc"]) for r in table] == [j["metrics"]["val_acc"] for j in data]
    assert [float(r["params.lr"]) for r in table] == [j["params"]["lr"] for j in data]
    assert [r["tags.dataset"] for r in table] == ["digits", "pets", "pets"]
    human = invoke(home, "results", "--where", where, "--order-by", "-val_acc").stdout
    assert "0.95" in human and "VAL_ACC" in human.upper()
    tagged = json.loads(invoke(home, "results", "--tag", "dataset=pets", "--json").stdout)
    assert {j["name"] for j in tagged} == {"a", "b"}
    listed = json.loads(invoke(home, "jobs", "--tag", "dataset=digits", "--json").stdout)
    assert [j["name"] for j in listed] == ["c"]


@pytest.mark.parametrize(
    ("where", "says"),
    [
        ("val_acc > ", "expected a value"),
        ("backbone = 'vgg16' or 1=1", "expected a name"),
        ("valacc > 0.9", "unknown name 'valacc'"),
        ("not " * 1200 + "val_acc > 0.5", "more than 50 levels"),
        ("(" * 2000 + "val_acc > 0.5" + ")" * 2000, "more than 50 levels"),
    ],
)
def test_bad_filter_is_one_line_exit_2(home, filled, where, says):
    result = invoke(home, "results", "--where", where)
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and says in result.stderr and "-->" in result.stderr
    assert "Traceback" not in result.output


def test_metrics_history_csv_and_json_agree(home, filled):
    job = filled["a"]
    history = json.loads(invoke(home, "metrics", job, "--json").stdout)
    assert [(m["step"], m["value"]) for m in history if m["name"] == "val_acc"] == [(1, 0.7), (2, 0.91), (3, 0.88)]
    table = list(csv.DictReader(io.StringIO(invoke(home, "metrics", job, "--csv").stdout)))
    assert [(r["name"], int(r["step"]), float(r["value"])) for r in table] == [
        (m["name"], m["step"], m["value"]) for m in history
    ]
    only = json.loads(invoke(home, "metrics", job, "--name", "val_loss", "--json").stdout)
    assert {m["name"] for m in only} == {"val_loss"} and len(only) == 3
    human = invoke(home, "metrics", job).stdout
    assert "val_acc" in human and "0.91" in human
    missing = invoke(home, "metrics", job, "--name", "val_ac")
    assert missing.exit_code == 2 and "has no metric 'val_ac'" in missing.stderr and "val_acc" in missing.stderr


def test_plot_writes_a_png_with_one_curve_per_job(home, filled, tmp_path):
    from tlq.ml.plots import curves_in_png

    out = tmp_path / "plots" / "acc.png"
    ids = [filled[n] for n in "abc"]
    result = json.loads(invoke(home, "plot", *ids, "-o", out, "--json").stdout)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 300
    curves = curves_in_png(out)
    assert [c["job"] for c in curves] == ids
    assert [c["points"] for c in curves] == [3, 3, 2]
    assert "vgg16" in curves[0]["label"] and "lr=0.001" in curves[0]["label"]
    assert result["curves"] == [c["label"] for c in curves]
    # A job without the metric is left out, with a note; none with it is an error naming --metric.
    partial = invoke(home, "plot", filled["a"], filled["d"], "-o", out)
    assert partial.exit_code == 0 and "left out" in partial.stderr and len(curves_in_png(out)) == 1
    bad = invoke(home, "plot", filled["d"], "--metric", "val_acc", "-o", out)
    assert bad.exit_code == 2 and "--metric" in bad.stderr


def test_compare_and_plot_name_what_is_missing(home, filled):
    assert "there is no job 998" in invoke(home, "compare", 998, 999).stderr
    assert "there is no group 77" in invoke(home, "compare", "--group", 77).stderr
    assert invoke(home, "plot").exit_code == 2


def test_compare_names_a_metric_no_job_has(home, filled):
    result = invoke(home, "compare", filled["a"], filled["b"], "--metric", "val_acccc")
    assert result.exit_code == 2
    assert "none of these jobs has the metric 'val_acccc'" in result.stderr and "val_acc" in result.stderr


def test_artifacts_copy_keeps_folders_and_refuses_to_overwrite(home, filled, tmp_path):
    job = filled["a"]
    job_dir = record_artifacts(home, job, {"a/x.txt": "AAA", "b/x.txt": "BBB"})
    listed = json.loads(invoke(home, "artifacts", job, "--json").stdout)
    assert [a["relative"] for a in listed] == [f"{job}/a/x.txt", f"{job}/b/x.txt"]
    out = tmp_path / "out"
    copied = json.loads(invoke(home, "artifacts", job, "--copy-to", out, "--json").stdout)
    assert sorted(copied) == [str(out / "a" / "x.txt"), str(out / "b" / "x.txt")]
    assert (out / "a" / "x.txt").read_text() == "AAA" and (out / "b" / "x.txt").read_text() == "BBB"
    again = invoke(home, "artifacts", job, "--copy-to", out)
    assert again.exit_code == 2 and "already exists" in again.stderr
    inside = invoke(home, "artifacts", job, "--copy-to", job_dir / "a")
    assert inside.exit_code == 2 and "inside job" in inside.stderr
    assert "no 'model' artifact" in invoke(home, "artifacts", job, "--kind", "model").stderr


def test_sweep_values_split_on_commas_or_semicolons_by_type():
    from tlq.cli.options import sweep_separator
    from tlq.cli.submit import SWEEPABLE_COMMON, split_sweep_options
    from tlq.plugins.registry import task_registry

    tasks = task_registry()
    finetune = tasks.get("finetune").params.model_fields
    adversarial = tasks.get("adversarial").params.model_fields
    separators = {n: sweep_separator(f) for n, f in (finetune | adversarial).items()} | SWEEPABLE_COMMON
    options = {
        "backbone": "vgg16, resnet50",
        "lr": "1e-3,0.001,1e-4",
        "label_pattern": r"^(.+)_\d{1,3}\.jpg$",
        "target": "tabby, tabby cat;Siamese cat",
        "eps": "1/255,2/255;4/255",
        "strategy": "full,freeze",
        "data": "./pets",
        "wait": False,
        "name": "x",
    }
    grid, fixed = split_sweep_options(options, separators)
    assert grid == {
        "backbone": ["vgg16", "resnet50"],
        "lr": ["1e-3", "1e-4"],
        "target": ["tabby, tabby cat", "Siamese cat"],
        "eps": ["1/255,2/255", "4/255"],
        "strategy": ["full", "freeze"],
    }
    assert fixed == {"label_pattern": r"^(.+)_\d{1,3}\.jpg$", "data": "./pets"}


def test_client_functions_refuse_unknown_keywords(home, filled):
    from tlq import client

    assert client.get(filled["a"], home=home)["name"] == "a"
    with pytest.raises(TypeError, match="hom"):
        client.get(filled["a"], hom=home)
    assert [r["job"] for r in client.compare(jobs=[filled["a"], filled["b"]], home=home)] == [filled["a"], filled["b"]]
    import typing

    assert typing.get_type_hints(client.results)["return"] == list[dict[str, typing.Any]]


def record_artifacts(home, job: int, files: dict[str, str]) -> Path:
    """Writes ``files`` (path inside the job's folder -> text) as artifacts of ``job``; returns the job's folder."""
    import hashlib

    from tlq.db import queries

    settings = Settings.load(home=home, environ={})
    database = Database(settings.database_url)
    with database.session() as session:
        for rel, text in files.items():
            path = settings.artifacts_dir / str(job) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            digest = hashlib.sha256(text.encode()).hexdigest()
            queries.record_artifact(session, job, "note", f"{job}/{rel}", len(text), digest)
    database.dispose()
    return settings.artifacts_dir / str(job)


def test_artifacts_copy_never_writes_through_a_symlink(home, filled, tmp_path):
    record_artifacts(home, filled["a"], {"a/x.txt": "AAA", "b/x.txt": "BBB"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "a" / "x.txt").symlink_to(elsewhere / "pwned.txt")  # dangling: exists() says it is not there
    before = tree(out)
    result = invoke(home, "artifacts", filled["a"], "--copy-to", out)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{out / 'a' / 'x.txt'} is a symbolic link" in result.stderr and "nothing was copied" in result.stderr
    assert tree(out) == before and not (elsewhere / "pwned.txt").exists()
    # A folder on the way that is a link to a real folder is refused too.
    (out / "a" / "x.txt").unlink()
    (out / "b").symlink_to(elsewhere)
    before = tree(out)
    result = invoke(home, "artifacts", filled["a"], "--copy-to", out)
    assert result.exit_code == 2 and f"{out / 'b'} is a symbolic link" in result.stderr
    assert tree(out) == before and list(elsewhere.iterdir()) == []


def test_a_tampered_artifact_fails_the_copy_and_leaves_the_destination_as_it_was(home, filled, tmp_path):
    job_dir = record_artifacts(home, filled["a"], {"a/x.txt": "AAA", "b/x.txt": "BBB"})
    (job_dir / "b" / "x.txt").write_text("BBX")  # changed after the job recorded its digest
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke(home, "artifacts", filled["a"], "--copy-to", out)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{job_dir / 'b' / 'x.txt'} no longer matches the digest" in result.stderr
    assert tree(out) == {"keep.txt": "mine"}  # a/x.txt was copied first, then removed with its folder
    fresh = tmp_path / "new" / "deeper"
    assert invoke(home, "artifacts", filled["a"], "--copy-to", fresh).exit_code == 2
    assert not (tmp_path / "new").exists()


def test_goal_overrides_which_end_of_the_metric_ranks_first(home, filled):
    ids = [filled[n] for n in "abc"]
    losses = json.loads(invoke(home, "compare", *ids, "--metric", "val_loss", "--goal", "max", "--json").stdout)
    assert [(r["job"], r["best"]) for r in losses] == [(filled["b"], 1.0), (filled["a"], 0.9), (filled["c"], 0.2)]
    accs = json.loads(invoke(home, "compare", *ids, "--goal", "min", "--json").stdout)
    assert [(r["job"], r["best"]) for r in accs] == [(filled["b"], 0.6), (filled["a"], 0.7), (filled["c"], 0.93)]
