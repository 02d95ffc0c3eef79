"""`tlq.client.track`: a user's own script recorded as a job of the task ``external``, running while the block
runs, ended as the block ends (succeeded, failed with the error, cancelled), failed by a worker's recovery when
the script is killed, and shown by `tlq jobs`, `results`, `compare`, `plot` and the dashboard like any job."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from tests.support import REPO, WorkerProcess, job_json, tlq_env, wait_for_status
from tlq.cli.main import cli
from tlq.client import Client, track
from tlq.config import Settings
from tlq.errors import BadInput, JobCancelled


@pytest.fixture
def client(tmp_path) -> Client:
    return Client(settings=Settings.load(home=tmp_path / "home", environ={}))


def invoke(client: Client, *args):
    env = {"TLQ_HOME": str(client.settings.home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "COLUMNS": "200"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_tracked_block_is_a_job_that_jobs_results_compare_plot_and_the_dashboard_show(client, tmp_path):
    confusion = tmp_path / "confusion.csv"
    confusion.write_text("class,accuracy\n0,0.9\n")
    weights = tmp_path / "weights"
    (weights / "sub").mkdir(parents=True)
    (weights / "model.bin").write_bytes(b"\x00weights")
    (weights / "sub" / "config.json").write_text("{}")
    params = {"lr": 1e-3, "layers": [64, 32], "schedule": {"warmup": 2}}
    with track("loop-a", backbone="resnet18", params=params, tags={"dataset": "digits", "seed": 1}, client=client) as a:
        running = client.get(a.id)
        for loss in (0.9, 0.5, 0.3):
            a.log(train_loss=loss)  # steps 0, 1, 2
        a.log(step=2, val_acc=0.8)
        a.artifact(confusion)
        a.artifact(weights, kind="model")
    with track("loop-b", backbone="resnet18", params={"lr": 1e-2}, tags={"dataset": "digits"}, client=client) as b:
        b.log(step=0, val_acc=0.6)
        b.log(val_acc=0.9)  # step 1

    assert running["status"] == "running" and running["task"] == "external" and running["queue"] == "local"
    job = client.get(a.id)
    assert (job["status"], job["error"], job["name"], job["backbone"]) == ("succeeded", None, "loop-a", "resnet18")
    assert job["params"] == params and job["tags"] == {"dataset": "digits", "seed": "1"}
    assert job["metrics"] == {"train_loss": 0.3, "val_acc": 0.8}
    assert [(m["step"], m["value"]) for m in client.metrics(a.id, "train_loss")] == [(0, 0.9), (1, 0.5), (2, 0.3)]
    assert [(m["step"], m["value"]) for m in client.metrics(b.id, "val_acc")] == [(0, 0.6), (1, 0.9)]
    kept = {f["relative"]: f for f in client.artifacts(a.id)}
    assert set(kept) == {f"{a.id}/confusion.csv", f"{a.id}/weights/model.bin", f"{a.id}/weights/sub/config.json"}
    assert kept[f"{a.id}/confusion.csv"]["kind"] == "csv" and kept[f"{a.id}/weights/model.bin"]["kind"] == "model"
    assert kept[f"{a.id}/weights/model.bin"]["sha256"] == sha256(weights / "model.bin")
    assert open(kept[f"{a.id}/confusion.csv"]["path"]).read() == confusion.read_text()

    listing = invoke(client, "jobs").stdout
    assert all(word in listing for word in ("loop-a", "loop-b", "external", "succeeded"))
    found = json.loads(
        invoke(client, "results", "--where", "params.lr = 0.001 and tags.dataset = 'digits'", "--json").stdout
    )
    assert [j["id"] for j in found] == [a.id]
    board = json.loads(invoke(client, "compare", a.id, b.id, "--json").stdout)  # by val_acc, the first it knows
    assert [(row["job"], row["best"]) for row in board] == [(b.id, 0.9), (a.id, 0.8)]
    assert "train_loss leaderboard" in invoke(client, "compare", a.id, b.id, "--metric", "train_loss").stdout
    plotted = invoke(client, "plot", a.id, b.id, "-o", tmp_path / "val_acc.png")
    assert "2 curves of val_acc" in plotted.stdout and (tmp_path / "val_acc.png").stat().st_size > 0

    from starlette.testclient import TestClient

    from tlq.ui.app import create_app

    with TestClient(create_app(client.settings, token=""), base_url="http://127.0.0.1") as web:
        page = web.get(f"/jobs/{a.id}")
        assert page.status_code == 200 and "loop-a" in page.text and "external" in page.text
        series = web.get(f"/api/jobs/{a.id}/metrics").json()["metrics"]
        assert series["train_loss"]["values"] == [0.9, 0.5, 0.3]
        names = {f["name"] for f in web.get(f"/api/jobs/{a.id}/artifacts").json()}
        assert {"confusion.csv", "weights/model.bin"} <= names


def test_an_exception_in_the_block_fails_the_run_with_its_error_and_goes_on(client):
    with pytest.raises(RuntimeError, match="loss is nan"):
        with track("diverged", params={"lr": 10.0}, client=client) as run:
            run.log(step=0, loss=1.5)
            raise RuntimeError("loss is nan at step 1")
    job = client.get(run.id)
    assert (job["status"], job["error"]) == ("failed", "RuntimeError: loss is nan at step 1")
    assert job["metrics"] == {"loss": 1.5}  # what the block logged before it broke is kept
    with pytest.raises(ValueError, match="finite numbers only"):
        with track("nan", client=client) as run:
            run.log(loss=float("nan"))
    assert client.get(run.id)["status"] == "failed"


def test_tlq_cancel_stops_the_block_at_its_next_log(client):
    with pytest.raises(JobCancelled):
        with track("stopped", client=client) as run:
            assert client.cancel(run.id) == "requested"
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # the lease keeper sees the cancel within a poll (0.25 s)
                run.log(loss=1.0)
                time.sleep(0.05)
    assert client.get(run.id)["status"] == "cancelled"


def test_an_external_job_cannot_be_submitted_and_the_error_names_track(client):
    with track("mine", params={"lr": 0.1}, client=client) as run:
        run.log(loss=1.0)
    refused = invoke(client, "submit", "external", "--name", "x")
    assert refused.exit_code == 2
    assert refused.stderr.count("\n") == 1 and "tlq.client.track" in refused.stderr
    with pytest.raises(BadInput, match=r"tlq\.client\.track"):
        client.retry(run.id)  # its recorded parameters do not make it runnable either
    assert [job["id"] for job in client.list_jobs()] == [run.id]  # nothing was queued
    assert "recorded by tlq.client.track" in invoke(client, "tasks").stdout


def test_params_that_json_cannot_hold_are_refused_before_any_row(client):
    with pytest.raises(BadInput, match="JSON values"):
        with track("bad", params={"lr": float("inf")}, client=client):
            pass
    assert client.list_jobs() == []


KILLED_SCRIPT = """
import time
from tlq.client import track

with track("killed", params={"lr": 0.1}) as run:
    run.log(step=0, loss=1.0)
    print(run.id, flush=True)
    time.sleep(600)
"""


def test_a_script_killed_mid_run_ends_failed_by_a_workers_recovery(tmp_path):
    env = tlq_env(tmp_path / "home", TLQ_STALE_AFTER="2")
    script = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT], env=env, stdout=subprocess.PIPE, text=True)
    try:
        job_id = int(script.stdout.readline())
        deadline = time.monotonic() + 30
        while job_json(env, job_id)["metrics"] != {"loss": 1.0} and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job_json(env, job_id)["status"] == "running"
    finally:
        script.send_signal(signal.SIGKILL)
        script.wait(10)
    with WorkerProcess(env, tmp_path / "worker.log"):  # any live worker recovers a silent job
        job = wait_for_status(env, job_id, ("failed",), timeout=60)
    assert "no heartbeat" in job["error"] and "tlq.client.track" in job["error"], job["error"]
    assert job["metrics"] == {"loss": 1.0} and job["attempts"] == 1


def test_the_pytorch_loop_example_logs_its_run(tmp_path):
    env = tlq_env(tmp_path / "home")
    example = [sys.executable, str(REPO / "examples" / "track_loop.py"), "--steps", "4", "--eval-every", "2"]
    result = subprocess.run(example, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "tracking as tlq job 1" in result.stdout and "step 4: train_loss" in result.stdout
    job = job_json(env, 1)
    assert (job["task"], job["status"], job["name"], job["backbone"]) == (
        "external",
        "succeeded",
        "digits-loop",
        "test_resnet",
    )
    assert job["params"]["steps"] == 4 and {"train_loss", "train_acc", "val_loss", "val_acc"} == set(job["metrics"])
    assert [a["kind"] for a in job["artifacts"]] == ["model"] and job["artifacts"][0]["path"].endswith(".pt")


def test_a_log_or_artifact_after_the_block_is_refused_naming_the_block_not_dropped_or_called_a_takeover(
    client, tmp_path
):
    kept = tmp_path / "kept.txt"
    kept.write_text("x")
    with track("done", client=client) as run:
        run.log(step=0, loss=1.0)
    with pytest.raises(BadInput, match=r"run\.log: the with block of run 1 has ended.*inside the block"):
        run.log(step=1, loss=0.5)  # was accepted and silently dropped
    with pytest.raises(BadInput, match=r"run\.artifact: the with block of run 1 has ended"):
        run.artifact(kept)  # was JobLost "taken over by another worker"
    job = client.get(run.id)
    assert (job["status"], job["metrics"], job["artifacts"]) == ("succeeded", {"loss": 1.0}, [])


@pytest.mark.parametrize("value", ["abc", None, [1], 10**400])
def test_a_value_that_is_no_number_fails_the_run_naming_the_metric(client, value):
    with pytest.raises(ValueError, match=r"run\.log: metric 'val acc' is .*, not a number"):
        with track("bad-value", client=client) as run:
            run.log(**{"val acc": value})
    assert client.get(run.id)["status"] == "failed"


def test_an_artifact_that_is_neither_file_nor_folder_is_not_called_missing(client):
    with pytest.raises(BadInput, match="/dev/null is not a regular file or folder"):
        with track("device", client=client) as run:
            run.artifact("/dev/null")
