"""The compose topology run as local processes: three CPU workers started with the cpu-worker service's
command and environment, against the local Redis and PostgreSQL."""

from __future__ import annotations

import time
from collections import Counter
from urllib.parse import urlsplit

import pytest

from tests.compose_support import load_compose, tlq_args
from tests.integration.test_faults import submit_many, wait_all
from tests.support import WorkerProcess, run_tlq, tlq_env, tlq_json

pytestmark = pytest.mark.integration


def local_environment(service: dict, redis_url: str, pg_url: str, home) -> dict:
    """The service's environment with the compose hosts (redis, postgres) and volumes mapped to this machine.

    Only hosts, credentials and paths change: every variable the service sets is kept.
    """
    env = dict(service["environment"])
    assert urlsplit(env["TLQ_BROKER_URL"]).hostname == "redis"
    assert urlsplit(env["TLQ_DATABASE_URL"]).hostname == "postgres"
    env["TLQ_BROKER_URL"] = redis_url
    env["TLQ_DATABASE_URL"] = pg_url
    env["TLQ_ARTIFACTS_DIR"] = str(home / "artifacts")  # the shared "artifacts" volume
    env["HF_HOME"] = str(home / "hf-cache")  # the shared "hf-cache" volume
    return env


def test_three_cpu_workers_share_a_burst_and_gpu_jobs_wait_for_a_gpu(tmp_path, home, pg_url, redis_url, plugin_site):
    service = load_compose()["services"]["cpu-worker"]
    env = tlq_env(home, PYTHONPATH=str(plugin_site), **local_environment(service, redis_url, pg_url, home))
    args = tlq_args(service)
    assert args[0] == "worker"
    workers = [
        WorkerProcess(env, tmp_path / f"w{i}.log", *args[1:], "--name", f"cpu-worker-{i}").start() for i in (1, 2, 3)
    ]
    try:
        for w in workers:
            w.wait_ready(timeout=120)
        listed = tlq_json(["workers"], env)
        assert sorted(w["name"] for w in listed) == ["cpu-worker-1", "cpu-worker-2", "cpu-worker-3"]
        assert all(w["queues"] == ["cpu"] and w["device"].startswith("cpu") and w["hostname"] for w in listed)
        gpu_job = tlq_json(["submit", "sleep", "--steps", "1", "--device", "cuda"], env)
        ids = submit_many(env, 30, steps=2, step_seconds=0.2)
        rows = wait_all(pg_url, ids, timeout=180)
        time.sleep(1)
        waiting = tlq_json(["show", gpu_job["id"]], env)
        listing = run_tlq(["jobs"], env).stdout
    finally:
        for w in workers:
            w.discard()
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    spread = Counter(r["worker"] for r in rows.values())
    assert set(spread) == {"cpu-worker-1", "cpu-worker-2", "cpu-worker-3"} and min(spread.values()) >= 3, spread
    assert gpu_job["queue"] == "gpu" and waiting["status"] == "queued" and waiting["worker"] is None
    assert waiting["waiting"].startswith("waiting for a GPU worker")
    gpu_line = next(line for line in listing.splitlines() if line.split() and line.split()[0] == str(gpu_job["id"]))
    assert "waiting for a GPU worker" in gpu_line
