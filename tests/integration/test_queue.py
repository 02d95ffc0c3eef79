"""A real `tlq worker` process runs real jobs, on the embedded broker and on Redis + PostgreSQL."""

import csv
import json

import numpy as np
import pytest

from tests.support import WorkerProcess, job_json, run_tlq, tlq_env, tlq_json, wait_for_status, wait_until

pytestmark = pytest.mark.integration

SUBMIT_EXTRACT = ["submit", "feature-extract", "--backbone", "test_resnet", "--no-pretrained", "--precision", "fp32"]


def check_feature_job(job, digits_dir):
    assert job["status"] == "succeeded", job["error"]
    assert set(job) >= {
        "id",
        "task",
        "status",
        "backbone",
        "params",
        "metrics",
        "artifacts",
        "error",
        "attempts",
        "worker",
        "created_at",
        "started_at",
        "finished_at",
    }
    assert job["attempts"] == 1 and job["worker"] and job["error"] is None
    assert job["metrics"]["images"] == 120 and job["metrics"]["skipped"] == 0
    assert job["metrics"]["images_per_second"] > 0
    paths = {a["kind"]: a["path"] for a in job["artifacts"]}
    features = np.load(paths["features"])
    with open(paths["index"]) as fh:
        index = list(csv.DictReader(fh))
    assert features.shape == (120, 96) and np.isfinite(features).all()
    assert [row["path"] for row in index] == sorted(str(p.relative_to(digits_dir)) for p in digits_dir.rglob("*.png"))


def test_embedded_broker_worker_runs_feature_extract(tmp_path, home, digits_dir):
    env = tlq_env(home)
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "embedded-1"):
        workers = tlq_json(["workers"], env)
        assert [(w["name"], w["queues"], w["status"]) for w in workers] == [("embedded-1", ["cpu"], "online")]
        job = tlq_json([*SUBMIT_EXTRACT, "--data", digits_dir], env)
        assert job["status"] == "queued" and job["queue"] == "cpu"
        waited = run_tlq(["wait", job["id"], "--timeout", "120"], env)
        assert "succeeded" in waited.stdout
        check_feature_job(tlq_json(["show", job["id"]], env), digits_dir)
        listed = tlq_json(["jobs", "--task", "feature-extract", "--status", "succeeded"], env)
        assert [j["id"] for j in listed] == [job["id"]]
    assert (home / "tlq.sqlite").exists() and (home / "broker.sqlite").exists()


def test_redis_and_postgresql_worker_runs_feature_extract(tmp_path, home, digits_dir, pg_url, redis_url):
    env = tlq_env(home, database_url=pg_url, broker_url=redis_url)
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "scaled-1"):
        result = run_tlq([*SUBMIT_EXTRACT, "--data", digits_dir, "--wait", "--json"], env)
        job = json.loads(result.stdout)
        check_feature_job(job, digits_dir)
        assert job["worker"] == "scaled-1"
    config = tlq_json(["config"], env)
    assert config["database_url"]["value"].startswith("postgresql+psycopg://")
    assert config["broker_url"]["value"] == redis_url


def test_cancel_retry_and_routing(tmp_path, home, digits_dir, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    # No worker yet: a queued job can be cancelled before it ever starts.
    early = tlq_json(["submit", "sleep", "--steps", "2", "--step-seconds", "0.1"], env)
    assert run_tlq(["cancel", early["id"]], env).stdout.strip() == f"job {early['id']} cancelled"
    gpu_job = tlq_json(["submit", "sleep", "--steps", "1", "--device", "cuda"], env)
    assert gpu_job["queue"] == "gpu"
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "cpu-1"):
        long = tlq_json(["submit", "sleep", "--steps", "200", "--step-seconds", "0.2"], env)
        running = wait_for_status(env, long["id"], ("running",), timeout=60)
        assert running["worker"] == "cpu-1" and running["attempts"] == 1 and running["started_at"]
        wait_until(lambda: job_json(env, long["id"])["metrics"].get("step_done", 0) >= 3, 60, "three steps")
        assert "stops at its next step" in run_tlq(["cancel", long["id"]], env).stdout
        cancelled = wait_for_status(env, long["id"], ("cancelled", "succeeded", "failed"), timeout=30)
        assert (cancelled["status"], cancelled["error"]) == ("cancelled", "cancelled on request")
        assert 3 <= cancelled["metrics"]["step_done"] < 200  # stopped mid-run, not before it began or at its end
        retried = json.loads(run_tlq(["retry", early["id"], "--wait", "--json"], env).stdout)
        assert retried["status"] == "succeeded" and retried["parent_id"] == early["id"]
        assert retried["params"] == early["params"]
    never = tlq_json(["show", early["id"]], env)
    assert never["status"] == "cancelled" and never["started_at"] is None and never["attempts"] == 0
    # No GPU worker ever ran here: the cuda job is still waiting on the gpu queue.
    assert tlq_json(["show", gpu_job["id"]], env)["status"] == "queued"


def test_third_party_plugin_appears_and_runs_with_no_change_to_tlq(tmp_path, home, digits_dir, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    tasks = {t["name"]: t for t in tlq_json(["tasks"], env)}
    assert "pixel-stats" in tasks and "feature-extract" in tasks
    assert [p["flag"] for p in tasks["pixel-stats"]["params"]] == ["--data", "--max-images"]
    assert "pixel-stats" not in {t["name"] for t in tlq_json(["tasks"], tlq_env(home))}
    with WorkerProcess(env, tmp_path / "worker.log"):
        job = json.loads(run_tlq(["submit", "pixel-stats", "--data", digits_dir, "--wait", "--json"], env).stdout)
        sweep = json.loads(
            run_tlq(
                ["sweep", "pixel-stats", "--data", digits_dir, "--max-images", "1,12", "--wait", "--json"], env
            ).stdout
        )
    assert job["status"] == "succeeded", job["error"]
    # A sweep of it, ranked by the headline metric the task declares (contrast), with no --metric and no edit to tlq.
    board = tlq_json(["compare", sweep["group"]], env)
    contrasts = [job_json(env, row["job"])["metrics"]["contrast"] for row in board]
    assert len(board) == 2 and [row["best"] for row in board] == contrasts == sorted(contrasts, reverse=True)
    assert "contrast leaderboard" in run_tlq(["compare", sweep["group"]], env).stdout
    import sqlite3

    with sqlite3.connect(home / "tlq.sqlite") as db:  # the plain-SQL view holds it like any built-in metric
        summary = db.execute(
            "SELECT final_value FROM metric_summary WHERE job_id = ? AND name = 'contrast'", (job["id"],)
        )
        assert summary.fetchone()[0] == pytest.approx(job["metrics"]["contrast"])
    from PIL import Image

    pixels = np.concatenate(
        [
            np.asarray(Image.open(p).convert("RGB"), dtype=np.float64).reshape(-1, 3) / 255
            for p in sorted(digits_dir.rglob("*.png"))
        ]
    )
    assert job["metrics"]["images"] == 120
    assert job["metrics"]["mean_r"] == pytest.approx(pixels[:, 0].mean(), rel=1e-6)
    assert job["metrics"]["std_g"] == pytest.approx(pixels[:, 1].std(), rel=1e-6)


def test_pool_processes_share_the_cores_instead_of_each_taking_all(tmp_path, home, plugin_site):
    import os

    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    env.pop("OMP_NUM_THREADS", None)  # as a user's shell has it: the worker picks the count
    with WorkerProcess(env, tmp_path / "worker.log", "--concurrency", "2"):
        ids = [tlq_json(["submit", "sleep", "--steps", "1", "--step-seconds", "0", "--report-threads"], env)["id"]]
        ids.append(tlq_json(["submit", "sleep", "--steps", "1", "--step-seconds", "0", "--report-threads"], env)["id"])
        jobs = [wait_for_status(env, job_id, ("succeeded", "failed"), timeout=90) for job_id in ids]
    # two pool processes on this machine's cores: each gets its half, not a thread per core (OpenMP's spinning
    # threads, two sets of them on the same cores, made each job several times slower)
    assert [job["metrics"]["torch_threads"] for job in jobs] == [max(1, len(os.sched_getaffinity(0)) // 2)] * 2
