"""One real worker (Redis broker, one job at a time) behind the README's claims on ordering and following
jobs: --priority, `tlq wait`'s exit code, `tlq sweep --wait` and `client.sweep`."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from tests.support import REDIS_URL, WorkerProcess, job_json, run_tlq, tlq_env, wait_for_status

pytestmark = pytest.mark.integration

QUICK = {"steps": 1, "step_seconds": 0}


@pytest.fixture(scope="module")
def queue(tmp_path_factory, services, plugin_site):
    """A worker with --concurrency 1 on its own Redis database, and a client of the same setup in this process."""
    import redis

    from tests.conftest import _redis_db_numbers
    from tlq.client import Client

    broker = f"{REDIS_URL}/{next(_redis_db_numbers)}"
    redis.Redis.from_url(broker).flushdb()
    root = tmp_path_factory.mktemp("ordering")
    env = tlq_env(root / "home", broker_url=broker, PYTHONPATH=str(plugin_site))
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(plugin_site))  # the test tasks (sleep, escape) for the client here too
        with WorkerProcess(env, root / "worker.log", "--name", "one-at-a-time", "--concurrency", "1"):
            yield SimpleNamespace(env=env, client=Client(home=root / "home", broker_url=broker))


def test_a_higher_priority_job_queued_later_runs_before_lower_ones_queued_earlier(queue):
    client = queue.client
    busy = client.submit("sleep", steps=300, step_seconds=0.1)
    wait_for_status(queue.env, busy, ("running",), timeout=60)
    low, mid, high = (client.submit("sleep", priority=p, **QUICK) for p in (0, 5, 9))
    assert client.cancel(busy) == "requested"  # the three were queued while the only slot was taken
    done = {job: client.wait(job, timeout=120) for job in (low, mid, high)}
    assert client.get(busy)["status"] == "cancelled"
    assert all(job["status"] == "succeeded" for job in done.values())
    assert sorted(done, key=lambda job: done[job]["started_at"]) == [high, mid, low]


def test_wait_exits_1_for_a_failed_job_and_0_for_a_succeeded_one(queue):
    failed = queue.client.submit("escape")  # an artifact name that leaves its folder: the job fails
    succeeded = queue.client.submit("sleep", **QUICK)
    waited = {job: run_tlq(["wait", job, "--timeout", "120"], queue.env, check=False) for job in (failed, succeeded)}
    assert waited[failed].returncode == 1 and job_json(queue.env, failed)["status"] == "failed"
    assert waited[succeeded].returncode == 0 and job_json(queue.env, succeeded)["status"] == "succeeded"


def test_sweep_wait_returns_once_every_job_is_final_then_ranks_them(queue):
    swept = run_tlq(
        ["sweep", "sleep", "--steps", "1,3", "--step-seconds", "0.2", "--metric", "step_done", "--wait", "--json"],
        queue.env,
    )
    result = json.loads(swept.stdout)
    statuses = [job_json(queue.env, job)["status"] for job in result["jobs"]]  # read right after it returned
    assert len(result["jobs"]) == 2 and statuses == ["succeeded", "succeeded"]
    assert [row["final"] for row in result["leaderboard"]] == [3, 1]  # the leaderboard, best first
    # One run failing makes the sweep's exit code 1, still only after every job ended.
    failing = run_tlq(["sweep", "escape", "--wait", "--json"], queue.env, check=False)
    assert failing.returncode == 1
    assert [job_json(queue.env, job)["status"] for job in json.loads(failing.stdout)["jobs"]] == ["failed"]


def test_client_sweep_queues_the_cross_product_as_one_group(queue):
    client = queue.client
    sweep = client.sweep("sleep", {"steps": [1, 2], "step_seconds": [0, 0.01]}, tags={"study": "client"})
    assert set(sweep) == {"group", "jobs"} and len(sweep["jobs"]) == 4
    jobs = [client.wait(job, timeout=120) for job in sweep["jobs"]]
    assert {(j["params"]["steps"], j["params"]["step_seconds"]) for j in jobs} == {(1, 0), (1, 0.01), (2, 0), (2, 0.01)}
    assert all(j["group_id"] == sweep["group"] and j["tags"] == {"study": "client"} for j in jobs)
    board = client.compare(group=sweep["group"], metric="step_done")
    assert len(board) == 4 and board[0]["best"] == 2 and board[0]["best_run"]
    with pytest.raises(Exception, match="more than --max-jobs 3"):  # the cap holds for the client too
        client.sweep("sleep", {"steps": [1, 2], "step_seconds": [0, 0.01]}, max_jobs=3)


def test_a_job_past_its_timeout_fails_at_its_next_step(queue):
    """The step-time check (the worker's main process ends a job stuck inside one step: test_leases.py)."""
    job = queue.client.submit("sleep", steps=100, step_seconds=0.1, timeout=1)
    done = queue.client.wait(job, timeout=120)
    assert done["status"] == "failed" and done["attempts"] == 1
    assert done["error"] == f"job {job} ran past its timeout of 1 s; raise --timeout if it needs longer"
    assert 1 <= done["metrics"]["step_done"] < 100  # it stopped at a step, long before its last
