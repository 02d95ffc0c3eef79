"""Fault injection with real worker processes on real Redis, PostgreSQL and SQLite: no job lost, none run
twice, and a worker that lives through whatever it is fed."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time

import pytest
import sqlalchemy as sa

from tests.support import WorkerProcess, figure, job_json, run_tlq, tlq_env, tlq_json, wait_for_status

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivateRedis:
    """A redis-server of this test's own, which it may stop and start at will."""

    def __init__(self, tmp_path) -> None:
        self.port = free_port()
        self.dir = tmp_path
        self.proc = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path).start()
    yield server
    server.stop()


SUBMIT_MANY = """
import json, sys
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.workers.app import create_app
from tlq.jobs.submit import submit

count, params = int(sys.argv[1]), json.loads(sys.argv[2])
env = Environment(Settings.load())
app = create_app(env.settings)
print(json.dumps([submit(env, JobSpec(task="sleep", params=params), app=app) for _ in range(count)]))
"""


def submit_many(env: dict, count: int, **params) -> list[int]:
    """Submits ``count`` sleep jobs through tlq's own submit path in one process (200 CLI calls are slow)."""
    out = subprocess.run(
        [sys.executable, "-c", SUBMIT_MANY, str(count), json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def job_rows(database_url: str, ids: list[int]) -> dict[int, dict]:
    """Status, attempts, worker and error of each job, and how many step_done rows it recorded."""
    from tlq.config import normalize_database_url

    engine = sa.create_engine(normalize_database_url(database_url))
    select_jobs = sa.text("SELECT id, status, attempts, worker, error FROM jobs WHERE id IN :ids").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    with engine.connect() as conn:
        jobs = {r.id: dict(r._mapping) for r in conn.execute(select_jobs, {"ids": list(ids)})}
        counts = dict(
            conn.execute(sa.text("SELECT job_id, count(*) FROM metrics WHERE name = 'step_done' GROUP BY job_id")).all()
        )
    engine.dispose()
    for job_id, row in jobs.items():
        row["step_rows"] = counts.get(job_id, 0)
    return jobs


def wait_all(database_url: str, ids: list[int], timeout: float) -> dict[int, dict]:
    deadline = time.monotonic() + timeout
    while True:
        rows = job_rows(database_url, ids)
        if all(r["status"] in FINAL for r in rows.values()) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


# 2 ---------------------------------------------------------------------------------------------------------------
def test_redis_restart_loses_no_job_and_the_worker_keeps_consuming(tmp_path, home, pg_url, private_redis, plugin_site):
    env = tlq_env(home, database_url=pg_url, broker_url=private_redis.url, PYTHONPATH=str(plugin_site))
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "survivor") as worker:
        running = tlq_json(["submit", "sleep", "--steps", "30", "--step-seconds", "0.5"], env)
        wait_for_status(env, running["id"], ("running",), timeout=60)
        # Queued behind it (one process, so a slow machine still has them queued before the long job ends)
        queued = submit_many(env, 3, steps=2, step_seconds=0.1)
        private_redis.stop()  # no persistence: the queued messages die with it
        time.sleep(1.0)
        private_redis.start()
        restarted = time.monotonic()
        rows = wait_all(pg_url, [running["id"], *queued], timeout=120)
        figure("redis restart", jobs=len(rows), restart_to_all_done_s=time.monotonic() - restarted)
        assert {r["status"] for r in rows.values()} == {"succeeded"}, (rows, worker.log()[-3000:])
        assert all(r["attempts"] == 1 and r["step_rows"] in (2, 30) for r in rows.values())
        after = json.loads(run_tlq(["submit", "sleep", "--steps", "1", "--wait", "--json"], env, timeout=120).stdout)
        assert after["status"] == "succeeded" and after["worker"] == "survivor"
        # The first report after the restart sent all three lost jobs again. (Reports within CLOCK_MARGIN of the
        # broker's start send them once more, as a message then may predate it; the duplicates were dropped, as
        # attempts and step rows above show.)
        resent = [int(n) for n in re.findall(r"sent (\d+) queued job\(s\) again", worker.log())]
        assert resent[:1] == [3], worker.log()[-3000:]


# 3 ---------------------------------------------------------------------------------------------------------------
def test_a_job_longer_than_the_visibility_timeout_runs_exactly_once(tmp_path, home, pg_url, redis_url, plugin_site):
    env = tlq_env(
        home, database_url=pg_url, broker_url=redis_url, PYTHONPATH=str(plugin_site), TLQ_VISIBILITY_TIMEOUT="2"
    )
    with (
        WorkerProcess(env, tmp_path / "w1.log", "--name", "first"),
        WorkerProcess(env, tmp_path / "w2.log", "--name", "second") as second,
    ):
        job = tlq_json(["submit", "sleep", "--steps", "12", "--step-seconds", "0.5"], env)
        done = wait_for_status(env, job["id"], FINAL, timeout=120)
        logs = second.log() + (tmp_path / "w1.log").read_text()
    assert done["status"] == "succeeded" and done["attempts"] == 1
    rows = job_rows(pg_url, [job["id"]])
    assert rows[job["id"]]["step_rows"] == 12  # each step ran once
    assert f"job {job['id']} is running; delivery dropped" in logs  # the redelivery came, and was dropped
    figure("visibility timeout 2 s, 6 s job", runs=1, deliveries_dropped=logs.count("delivery dropped"))


# 4 ---------------------------------------------------------------------------------------------------------------
def test_cancel_stops_a_running_job_within_one_step(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    with WorkerProcess(env, tmp_path / "worker.log"):
        job = tlq_json(["submit", "sleep", "--steps", "100", "--step-seconds", "0.5"], env)
        queued = tlq_json(["submit", "sleep", "--steps", "1"], env)
        deadline = time.monotonic() + 60
        while job_json(env, job["id"])["metrics"].get("step_done", 0) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert run_tlq(["cancel", queued["id"]], env).stdout.strip() == f"job {queued['id']} cancelled"
        cancelled_at = time.monotonic()
        run_tlq(["cancel", job["id"]], env)
        at_cancel = job_json(env, job["id"])["metrics"]["step_done"]
        done = wait_for_status(env, job["id"], FINAL, timeout=30)
        figure(
            "cancel running job (0.5 s steps)",
            steps_after_cancel=done["metrics"]["step_done"] - at_cancel,
            cancel_to_cancelled_s=time.monotonic() - cancelled_at,
        )
    assert done["status"] == "cancelled"
    assert done["metrics"]["step_done"] <= at_cancel + 1
    assert tlq_json(["show", queued["id"]], env)["status"] == "cancelled"


# 5 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_burst_of_200_jobs_on_4_workers_runs_each_once(tmp_path, home, plugin_site, backend, request):
    if backend == "sqlite":
        env = tlq_env(home, PYTHONPATH=str(plugin_site))
        database_url = f"sqlite:///{home / 'tlq.sqlite'}"
    else:
        database_url = request.getfixturevalue("pg_url")
        env = tlq_env(
            home,
            database_url=database_url,
            broker_url=request.getfixturevalue("redis_url"),
            PYTHONPATH=str(plugin_site),
        )
    workers = [WorkerProcess(env, tmp_path / f"w{i}.log", "--name", f"burst-{i}").start() for i in range(4)]
    try:
        for w in workers:
            w.wait_ready(timeout=120)
        submitted = time.monotonic()
        ids = submit_many(env, 200, steps=1, step_seconds=0)
        rows = wait_all(database_url, ids, timeout=240)
        figure(f"burst on {backend}", jobs=len(rows), workers=4, submit_to_all_done_s=time.monotonic() - submitted)
        logs = "".join(w.log() for w in workers)
    finally:
        for w in workers:
            w.discard()
    assert len(rows) == 200  # no lost row
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    assert {r["attempts"] for r in rows.values()} == {1} and {r["step_rows"] for r in rows.values()} == {1}
    assert len({r["worker"] for r in rows.values()}) >= 2
    assert "database is locked" not in logs


# 6 ---------------------------------------------------------------------------------------------------------------
def test_a_poison_job_fails_after_max_attempts_while_others_flow(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        poison = tlq_json(["submit", "crash", "--max-attempts", "2"], env)
        submitted = time.monotonic()
        others = [tlq_json(["submit", "sleep", "--steps", "2", "--step-seconds", "0.1"], env)["id"] for _ in range(3)]
        failed = wait_for_status(env, poison["id"], FINAL, timeout=120)
        figure("poison job", attempts=failed["attempts"], submit_to_failed_s=time.monotonic() - submitted)
        for job_id in others:
            assert wait_for_status(env, job_id, FINAL, timeout=60)["status"] == "succeeded"
        assert worker.proc.poll() is None  # the worker itself lived through it
    assert failed["status"] == "failed" and failed["attempts"] == 2
    assert "worker process running it died" in failed["error"] and "attempt 2 of 2" in failed["error"]


# 1 (the finetune case is tests/integration/test_resume.py) and a warm shutdown that hands the job back ------------
def test_sigterm_puts_the_running_job_back_and_it_finishes_elsewhere(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    first = WorkerProcess(env, tmp_path / "w1.log", "--name", "leaving").start().wait_ready()
    job = tlq_json(["submit", "sleep", "--steps", "24", "--step-seconds", "0.25"], env)
    wait_for_status(env, job["id"], ("running",), timeout=60)
    time.sleep(1.0)
    took = first.stop(timeout=30)
    figure("SIGTERM with a running job", stop_took_s=took)
    # It left on its own (a worker still there after 30 s is killed, and exits -9), having handed the job back
    # first: the job is queued again before any other worker exists to touch it.
    assert first.proc.returncode == 0, (first.proc.returncode, first.log()[-2000:])
    back = job_json(env, job["id"])
    assert back["status"] == "queued" and back["attempts"] == 0 and "released" in back["progress"]["stage"]
    assert back["metrics"]["step_done"] < 24  # handed back mid-run, not after finishing it
    with WorkerProcess(env, tmp_path / "w2.log", "--name", "staying"):
        done = wait_for_status(env, job["id"], FINAL, timeout=60)
    assert done["status"] == "succeeded" and done["worker"] == "staying" and done["attempts"] == 1


# 7 ---------------------------------------------------------------------------------------------------------------
class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_pickle_messages_and_pickled_weights_are_refused(tmp_path, home, digits_dir, plugin_site):
    from kombu import Connection

    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    marker = tmp_path / "code-ran"
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        with Connection(f"sqla+sqlite:///{home / 'broker.sqlite'}") as conn:
            producer = conn.Producer(serializer="pickle")
            producer.publish(
                {"args": [_Marker(marker)], "kwargs": {}},
                routing_key="cpu",
                exchange="cpu",
                headers={"task": "tlq.run_job", "id": "pickled-1", "lang": "py", "argsrepr": "", "kwargsrepr": ""},
                declare=[conn.SimpleQueue("cpu").queue],
            )
        time.sleep(3)
        after = json.loads(run_tlq(["submit", "sleep", "--steps", "1", "--wait", "--json"], env, timeout=120).stdout)
        assert after["status"] == "succeeded" and worker.proc.poll() is None
        assert "Refusing to deserialize untrusted content of type pickle" in worker.log()
    assert not marker.exists()
    evil = tmp_path / "evil.pth"
    import torch

    torch.save({"conv1.weight": torch.zeros(1), "x": _Marker(marker)}, evil)
    result = run_tlq(
        ["submit", "feature-extract", "--backbone", "test_resnet", "--weights", evil, "--data", digits_dir],
        env,
        check=False,
    )
    assert result.returncode == 2 and "was refused" in result.stderr
    assert not marker.exists()
