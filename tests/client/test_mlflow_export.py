"""`tlq export mlflow` against a real MLflow tracking store (SQLite backend, files in a temporary folder), read
back as an MLflow user would (``mlflow.search_runs``, ``MlflowClient.get_metric_history``, the model registry):
each job a run with its parameters, tags, full metric history and files; a group's jobs nested in its parent
run; a succeeded finetune a registered model version; a second export adding nothing twice."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from tests.support import make_digits, populate_results, run_job_here
from tlq.cli.main import cli

mlflow = pytest.importorskip("mlflow", reason="the dev extra installs mlflow-skinny")  # never skipped under make


@pytest.fixture(autouse=True)
def no_telemetry(monkeypatch):
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")  # tests send nothing anywhere


def export(setup, *args) -> SimpleNamespace:
    """Runs `tlq export mlflow ARGS --json` on the setup's tlq home and MLflow store."""
    env = {"TLQ_HOME": str(setup.home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "MLFLOW_TRACKING_URI": ""}
    argv = ["export", "mlflow", "--tracking-uri", setup.uri, "--artifact-location", str(setup.files), "--json", *args]
    result = CliRunner().invoke(cli, argv, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return SimpleNamespace(**json.loads(result.stdout))


@contextlib.contextmanager
def tracking(setup):
    """``mlflow``'s own functions on the setup's store, for the block."""
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(setup.uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def runs_of(setup) -> dict[str, object]:
    """The experiment's runs as ``mlflow.search_runs`` gives them, by their ``tlq.job_id`` (or ``group G``)."""
    with tracking(setup):
        runs = mlflow.search_runs(experiment_names=["tlq"], output_format="list")
    return {r.data.tags.get("tlq.job_id") or f"group {r.data.tags['tlq.group_id']}": r for r in runs}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tlq database with the query tests' finetune rows (a, b grouped as the sweep 'ab sweep'; d queued), a real
    tiny finetune (test_resnet on 3 x 4 digits, one epoch at 32 pixels: its model files), exported once."""
    from tlq.client import Client
    from tlq.config import Settings
    from tlq.db import queries, results
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec

    root = tmp_path_factory.mktemp("mlflow")
    env = Environment(Settings.load(home=root / "home", environ={}))
    ids = populate_results(env.db)
    with env.db.session() as session:
        group = results.create_group(session, "ab sweep", {"task": "finetune", "axes": {"lr": [1e-3, 1e-4]}})
        for name in ("a", "b"):
            queries.get_job(session, ids[name]).group_id = group
    data = make_digits(root / "digits", classes=range(3), per_class=4, size=32)
    params = {"data": str(data), "strategy": "full", "epochs": 2, "image_size": 32, "augment": "none"}
    params |= {"batch_size": 16, "precision": "fp32", "loader_workers": 0}
    spec = JobSpec(task="finetune", backbone="test_resnet", pretrained=False, name="digits", params=params)
    ids["finetune"] = run_job_here(env, spec)["id"]
    made = SimpleNamespace(
        home=root / "home", uri=f"sqlite:///{root}/mlflow.db", files=root / "mlflow-files", ids=ids, group=group
    )
    made.first = export(made)
    made.client = Client(env=env)
    return made


def test_each_job_is_a_run_with_its_params_tags_metric_history_and_files(setup):
    from mlflow import MlflowClient

    assert {run["action"] for run in setup.first.runs} == {"created"} and len(setup.first.runs) == 5
    runs = runs_of(setup)
    job_id = setup.ids["finetune"]
    run = runs[str(job_id)]
    tags = run.data.tags
    expected = {"tlq.task": "finetune", "tlq.backbone": "test_resnet", "tlq.status": "succeeded", "tlq.name": "digits"}
    assert expected.items() <= tags.items()
    assert tags["tlq.instance"] == setup.client.env.db.instance_id and tags["mlflow.runName"] == f"digits #{job_id}"
    assert run.info.status == "FINISHED" and run.info.run_name == f"digits #{job_id}"
    expected = {"epochs": "2", "lr": "0.001", "backbone": "test_resnet", "image_size": "32", "strategy": "full"}
    assert expected.items() <= run.data.params.items()
    ml = MlflowClient(setup.uri)
    for name in ("val_acc", "train_loss"):
        history = [(m.step, m.value) for m in ml.get_metric_history(run.info.run_id, name)]
        assert sorted(history) == [(m["step"], m["value"]) for m in setup.client.metrics(job_id, name)]
    files = {f.path for f in ml.list_artifacts(run.info.run_id)} | {
        f.path for f in ml.list_artifacts(run.info.run_id, "model")
    }
    assert {"model/model.safetensors", "model/model_card.json", "curves.png", "confusion_matrix.csv"} <= files

    queued = runs[str(setup.ids["d"])]  # not run yet: scheduled, with its tags
    assert queued.info.status == "SCHEDULED" and queued.data.tags["tlq.status"] == "queued"
    assert queued.data.tags["odd _key_"] == "x"  # a tag name MLflow refuses is written with its odd letters as _
    with tracking(setup):
        frame = mlflow.search_runs(experiment_names=["tlq"], filter_string="params.lr = '0.001'")
    assert set(frame["tags.tlq.job_id"]) == {str(setup.ids["a"]), str(setup.ids["c"]), str(job_id)}


def test_a_groups_jobs_are_nested_in_a_parent_run_named_after_it(setup):
    runs = runs_of(setup)
    parent = runs[f"group {setup.group}"]
    assert parent.info.run_name == "ab sweep" and parent.info.status == "FINISHED"
    assert json.loads(parent.data.tags["tlq.group_spec"])["axes"] == {"lr": [1e-3, 1e-4]}
    children = {key for key, run in runs.items() if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {str(setup.ids["a"]), str(setup.ids["b"])}


def test_a_succeeded_finetune_is_a_registered_model_version_holding_its_model(setup, tmp_path):
    from mlflow import MlflowClient

    job_id = setup.ids["finetune"]
    [model] = [m for m in setup.first.models if m["job"] == job_id]
    assert (model["name"], model["version"], model["action"]) == ("digits", 1, "registered")
    [version] = MlflowClient(setup.uri).search_model_versions("name = 'digits'")
    assert version.run_id == runs_of(setup)[str(job_id)].info.run_id and version.tags["tlq.job_id"] == str(job_id)
    with tracking(setup):
        folder = Path(mlflow.artifacts.download_artifacts("models:/digits/1", dst_path=str(tmp_path)))
    [weights] = setup.client.artifacts(job_id, "model")
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == weights["sha256"]
    assert json.loads((folder / "model_card.json").read_text())["backbone"]
    # the query tests' finetune rows have no model files: said, not registered
    assert f"job {setup.ids['a']}: no model files to register" in setup.first.left_out


def test_exporting_again_adds_nothing_twice_and_completes_a_run_that_was_running(setup):
    from mlflow import MlflowClient

    from tlq.client import track

    with track("live", params={"lr": 0.1}, client=setup.client) as live:
        live.log(step=0, loss=1.0)
        live.log(step=1, loss=0.5)
        deadline = time.monotonic() + 10
        while len(setup.client.metrics(live.id)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # the lease keeper writes within a poll
        during = export(setup)
        live.log(step=2, loss=0.25)
    after = export(setup)
    again = export(setup)

    # A run whose job has ended is left alone; one whose job has not (d is queued, live was running) is updated.
    queued = setup.ids["d"]
    assert {run["job"]: run["action"] for run in during.runs} == {job: "unchanged" for job in setup.ids.values()} | {
        queued: "updated",
        live.id: "created",
    }
    assert {run["job"]: run["action"] for run in after.runs}[live.id] == "updated"
    assert {run["action"] for run in again.runs if run["job"] != queued} == {"unchanged"}
    assert [group["action"] for group in again.groups] == ["unchanged"]
    assert [m["action"] for m in again.models] == ["exists"]
    runs = runs_of(setup)
    assert len(runs) == 5 + 1 + 1  # the jobs, the tracked run, the group's parent: one run each
    run = runs[str(live.id)]
    assert run.info.status == "FINISHED" and run.data.tags["tlq.task"] == "external"
    history = MlflowClient(setup.uri).get_metric_history(run.info.run_id, "loss")
    assert sorted((m.step, m.value) for m in history) == [(0, 1.0), (1, 0.5), (2, 0.25)]
    assert len(MlflowClient(setup.uri).search_model_versions("name = 'digits'")) == 1


def test_group_and_where_choose_the_jobs(setup):
    only = export(setup, "--group", setup.group)
    assert sorted(run["job"] for run in only.runs) == sorted([setup.ids["a"], setup.ids["b"]])
    found = export(setup, "--where", "backbone = 'resnet50'")
    assert sorted(run["job"] for run in found.runs) == sorted([setup.ids["c"], setup.ids["d"]])
    env = {"TLQ_HOME": str(setup.home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": ""}
    both = CliRunner().invoke(
        cli, ["export", "mlflow", "--tracking-uri", setup.uri, "--group", "1", "--where", "id = 1"], env=env
    )
    assert both.exit_code == 2 and "give --group or --where, not both" in both.stderr
    huge = CliRunner().invoke(cli, ["export", "mlflow", "--tracking-uri", setup.uri, "--group", "9" * 20], env=env)
    assert (
        huge.exit_code == 2
        and huge.stderr == f"Error: there is no group {'9' * 20}; `tlq sweep` prints the group of the jobs it queues\n"
    )  # was an OverflowError traceback


def test_without_mlflow_the_error_names_the_extra(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if it were not installed
    env = {"TLQ_HOME": str(tmp_path / "home"), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": ""}
    result = CliRunner().invoke(cli, ["export", "mlflow", "--tracking-uri", "sqlite:///x.db"], env=env)
    assert result.exit_code == 2
    assert (
        result.stderr
        == "Error: `tlq export mlflow` needs MLflow, which is not installed here: pip install 'tlq[mlflow]'\n"
    )


def test_a_server_that_cannot_be_reached_is_one_line_with_its_password_hidden(setup, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    env = {"TLQ_HOME": str(setup.home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": ""}
    argv = ["export", "mlflow", "--tracking-uri", "http://me:hunter2@127.0.0.1:1"]  # nothing listens on port 1
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("Error: MLflow at http://me:***@127.0.0.1:1 refused the export: ")
    assert "hunter2" not in result.stderr


def test_names_mlflow_would_take_for_other_paths_are_exported_under_a_safe_name(tmp_path):
    from tlq.client import Client, track
    from tlq.config import Settings

    client = Client(settings=Settings.load(home=tmp_path / "home", environ={}))
    with track("paths", params={"out/": "x", "a": {"": 1}}, tags={"/t": "y"}, client=client) as run:
        run.log(**{"/loss": 1.0, "val/": 2.0, "a//b": 3.0, ".": 4.0, "..x": 5.0, "val/acc": 6.0, "ü név": 7.0})
    setup = SimpleNamespace(home=tmp_path / "home", uri=f"sqlite:///{tmp_path}/mlflow.db", files=tmp_path / "files")
    assert [r["action"] for r in export(setup).runs] == ["created"]  # was: MLflow refused the export
    data = runs_of(setup)[str(run.id)].data
    assert set(data.metrics) == {"__loss", "_val_", "_a__b", "_.", "_..x", "val/acc", "ü név"}
    assert data.params["_out_"] == "x" and data.tags["__t"] == "y" and "a." in data.params


def test_two_exports_at_once_give_each_job_one_run(tmp_path):
    import threading

    from tlq.client import Client, track
    from tlq.client.mlflow_export import export_mlflow
    from tlq.config import Settings

    client = Client(settings=Settings.load(home=tmp_path / "home", environ={}))
    for name in ("a", "b", "c", "d"):
        with track(name, client=client) as run:
            run.log(loss=1.0)
    setup = SimpleNamespace(home=tmp_path / "home", uri=f"sqlite:///{tmp_path}/mlflow.db", files=tmp_path / "files")
    export(setup, "--where", "id = 1")  # the store's tables, made once
    start = threading.Barrier(2)

    def export_all():
        start.wait()
        export_mlflow(client, setup.uri)

    threads = [threading.Thread(target=export_all) for _ in range(2)]
    [thread.start() for thread in threads]
    [thread.join(120) for thread in threads]
    with tracking(setup):
        runs = mlflow.search_runs(experiment_names=["tlq"], output_format="list")
    assert sorted(r.data.tags["tlq.job_id"] for r in runs) == ["1", "2", "3", "4"]  # was two runs of jobs 2 to 4


def test_a_store_that_cannot_be_opened_is_one_line_not_a_traceback(tmp_path):
    from tlq.client import Client, track
    from tlq.config import Settings

    with track("one", client=Client(settings=Settings.load(home=tmp_path / "home", environ={}))) as run:
        run.log(loss=1.0)
    (tmp_path / "file").write_text("not a folder")
    env = {"TLQ_HOME": str(tmp_path / "home"), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": ""}
    argv = ["export", "mlflow", "--tracking-uri", f"sqlite:///{tmp_path}/file/sub/mlflow.db"]
    result = CliRunner().invoke(cli, argv, env=env)
    assert result.exit_code == 1 and result.stderr.count("\n") == 1, result.stderr
    assert "refused the export: the tracking store could not be opened: " in result.stderr


def test_an_error_the_next_attempt_cleared_leaves_the_run_on_the_next_export(tmp_path):
    from tlq.config import Settings
    from tlq.db import queries
    from tlq.env import Environment

    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    with env.db.session() as session:
        job = queries.create_job(session, task="finetune", backbone="resnet18", params={}, queue="cpu", name="x")
        job.error, job.attempts = "no heartbeat for 70 s from worker w; requeued (attempt 1 of 3)", 1
    setup = SimpleNamespace(home=tmp_path / "home", uri=f"sqlite:///{tmp_path}/mlflow.db", files=tmp_path / "files")
    export(setup)
    assert "requeued" in runs_of(setup)["1"].data.tags["tlq.error"]
    with env.db.session() as session:  # the second attempt succeeds: its claim cleared the error
        job = queries.get_job(session, 1)
        job.status, job.error, job.finished_at = "succeeded", None, job.created_at
    assert [r["action"] for r in export(setup).runs] == ["updated"]
    tags = runs_of(setup)["1"].data.tags
    assert tags["tlq.status"] == "succeeded" and "tlq.error" not in tags  # was the first attempt's error
