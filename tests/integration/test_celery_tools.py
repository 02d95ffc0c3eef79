"""Celery's own tools attach to tlq's workers through tlq.workers.celery_app: `celery inspect` names the worker
and shows each running job by task and backbone, and a revoke or terminate sent from them (as Flower's buttons
send) becomes a tlq cancel."""

import json
import subprocess
import sys

import pytest
import redis

from tests.support import WorkerProcess, job_json, run_tlq, tlq_env, tlq_json, wait_for_status, wait_until

pytestmark = pytest.mark.integration


def celery(args: list[str], env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    """`celery -A tlq.workers.celery_app ARGS`, as a user types it, with the same TLQ_* settings as tlq."""
    command = [sys.executable, "-m", "celery", "-A", "tlq.workers.celery_app", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)


def waiting_message_ids(redis_url: str) -> list[str]:
    """The Celery task ids of the messages waiting in the cpu queue (every priority level of it)."""
    client = redis.Redis.from_url(redis_url)
    ids = []
    for key in client.scan_iter("cpu*"):
        if client.type(key) == b"list":
            ids += [json.loads(raw)["headers"]["id"] for raw in client.lrange(key, 0, -1)]
    return ids


def test_celery_inspect_ping_active_and_revoke_on_redis(tmp_path, home, pg_url, redis_url, plugin_site):
    env = tlq_env(home, database_url=pg_url, broker_url=redis_url, PYTHONPATH=str(plugin_site))
    worker = WorkerProcess(env, tmp_path / "worker.log", "--name", "tools-1", "--events")
    with worker:
        # `tlq worker` runs Celery with --without-gossip --without-mingle, and remote control stays on.
        ping = celery(["inspect", "ping", "--timeout", "5"], env)
        assert ping.returncode == 0, ping.stderr + ping.stdout
        assert "tools-1@" in ping.stdout and "pong" in ping.stdout

        # A running job shows as its task and backbone (the message's shadow name); its one argument is the id.
        running = tlq_json(["submit", "sleep", "--steps", "600", "--step-seconds", "0.1"], env)
        wait_for_status(env, running["id"], ("running",), timeout=60)
        active = celery(["inspect", "active", "--json", "--timeout", "5"], env)
        assert active.returncode == 0, active.stderr
        [(node, tasks)] = json.loads(active.stdout).items()
        [task] = tasks
        assert node.startswith("tools-1@")
        assert task["name"] == f"tlq.run_job[sleep #{running['id']}]" and task["type"] == "tlq.run_job"
        assert task["args"] == [running["id"]] and task["kwargs"] == {}

        # A job waiting behind it is revoked by its message id, as Flower's Revoke button does ...
        waiting = tlq_json(["submit", "sleep", "--steps", "1"], env)
        [message_id] = wait_until(lambda: waiting_message_ids(redis_url), 30, "the second job's message in Redis")
        assert celery(["control", "revoke", message_id, "--timeout", "5"], env).returncode == 0
        # ... and the running one terminated, as Flower's Terminate does: Celery kills its process (with SIGKILL
        # here, so the job has no chance to record an ending itself, as it does on SIGTERM).
        terminate = celery(["control", "terminate", "SIGKILL", task["id"], "--timeout", "5"], env)
        assert terminate.returncode == 0, terminate.stderr
        # Both end cancelled in tlq, as after `tlq cancel`: neither is requeued nor left queued forever.
        ended = wait_for_status(env, running["id"], ("cancelled", "failed", "succeeded", "queued"), timeout=60)
        assert ended["status"] == "cancelled", ended
        dropped = wait_for_status(env, waiting["id"], ("cancelled", "failed", "succeeded", "running"), timeout=60)
        assert dropped["status"] == "cancelled" and dropped["attempts"] == 0, dropped
        shown = run_tlq(["show", waiting["id"]], env).stdout
        assert "cancelled" in shown and "cancelled on request" in shown
        assert f"job {waiting['id']} was revoked from Celery: cancelled" in worker.log()
        assert f"job {running['id']} was terminated from Celery: requested" in worker.log()
        assert job_json(env, running["id"])["attempts"] == 1
        assert "cannot end" not in worker.log()  # the killed process is gone: nothing left to end


def test_the_embedded_broker_has_no_remote_control(tmp_path, home):
    """kombu's SQLAlchemy transport has no fanout exchange: no worker answers Celery's remote control there, and
    `tlq workers` is the way to see them."""
    env = tlq_env(home)
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "embedded-1"):
        ping = celery(["inspect", "ping", "--timeout", "2"], env)
        assert ping.returncode != 0 and "No nodes replied" in ping.stdout + ping.stderr
        assert [w["name"] for w in tlq_json(["workers"], env)] == ["embedded-1"]
