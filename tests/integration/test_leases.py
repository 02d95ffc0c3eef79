"""Leases with real worker processes: a frozen pool process, a job requeued under its holder, a job hung inside
one step, and worker names that two live workers cannot share."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.support import (
    WorkerProcess,
    figure,
    finetune_args,
    job_json,
    make_digits,
    metric_steps,
    run_tlq,
    tlq_env,
    tlq_json,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# 1 ---------------------------------------------------------------------------------------------------------------
def test_a_frozen_pool_process_loses_its_job_and_writes_nothing_when_it_wakes(tmp_path, home):
    data = make_digits(tmp_path / "data", classes=range(4), per_class=60)
    env = tlq_env(home, TLQ_STALE_AFTER="5")
    database_url = f"sqlite:///{home / 'tlq.sqlite'}"
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "pair", "--concurrency", "2") as worker:
        job_id = tlq_json(finetune_args(data, epochs=14), env)["id"]
        wait_until(
            lambda: (
                len(metric_steps(database_url, job_id).get("val_acc", [])) >= 2
                and any(a["kind"] == "checkpoint" for a in job_json(env, job_id)["artifacts"])
            ),
            120,
            "two checkpointed epochs",
        )
        first = job_json(env, job_id)["attempt_history"][-1]["pid"]
        os.kill(first, signal.SIGSTOP)  # a long GC pause, a frozen VM
        frozen_at = time.monotonic()
        took_over = wait_until(
            lambda: (job := job_json(env, job_id))["attempts"] == 2 and job["status"] == "running" and job,
            60,
            "the takeover by the sibling",
        )
        takeover_s = time.monotonic() - frozen_at
        second = took_over["attempt_history"][-1]["pid"]
        time.sleep(0.5)
        still_training = job_json(env, job_id)["status"] == "running"
        os.kill(first, signal.SIGCONT)  # wakes up while its sibling trains the same job
        stopped = f"job {job_id}: the job was taken over by another worker; this attempt stops without an outcome"
        wait_until(lambda: stopped in worker.log(), 60, "the woken process stopping at its next step")
        time.sleep(1.0)  # its task has returned; what is left is tidying up
        cpu_before = cpu_seconds(first)
        time.sleep(3.0)
        cpu_growth = cpu_seconds(first) - cpu_before
        done = wait_for_status(env, job_id, FINAL, timeout=180)
        log = worker.log()
    assert done["status"] == "succeeded", (done["error"], log[-3000:])
    assert first != second and done["attempts"] == 2 and still_training
    history = done["attempt_history"]
    assert [(a["pid"], a["outcome"]) for a in history] == [(first, "requeued"), (second, "succeeded")]
    assert {a["worker"] for a in history} == {"pair"}  # one worker name, two leases
    assert "no heartbeat" in history[0]["reason"]
    assert cpu_growth < 0.2, f"the woken process kept computing ({cpu_growth:.2f} s of CPU in 3 s)"
    steps = metric_steps(database_url, job_id)
    assert steps["val_acc"] == list(range(1, 15))
    models = [a for a in done["artifacts"] if a["kind"] == "model"]
    assert len(models) == 1
    assert hashlib.sha256(Path(models[0]["path"]).read_bytes()).hexdigest() == models[0]["sha256"]
    assert log.count(f"job {job_id} succeeded") == 1  # one final write
    assert log.count(stopped) == 1
    figure(
        "pool process frozen past TLQ_STALE_AFTER=5",
        freeze_to_takeover_s=takeover_s,
        woken_cpu_s=cpu_growth,
        attempts=done["attempts"],
        final_writes=log.count(f"job {job_id} succeeded"),
    )


# 2 ---------------------------------------------------------------------------------------------------------------
def test_only_the_lease_holder_writes_when_a_job_is_requeued_under_its_first_process(
    tmp_path, home, pg_url, redis_url, plugin_site
):
    from tlq.config import Settings
    from tlq.db import claims, queries
    from tlq.env import Environment
    from tlq.workers.app import create_app
    from tlq.workers.sending import send_held

    env = tlq_env(home, database_url=pg_url, broker_url=redis_url, PYTHONPATH=str(plugin_site))
    here = Environment(Settings.load(environ=env))
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "twins", "--concurrency", "2") as worker:
        job_id = tlq_json(["submit", "sleep", "--steps", "8", "--step-seconds", "1.5", "--sign"], env)["id"]
        # Right after a step, so that the first process is still inside its next 1.5 s step when the job is
        # requeued and sent: the sibling must take it.
        wait_until(lambda: len(metric_steps(pg_url, job_id).get("step_done", [])) >= 2, 60, "two steps")
        with here.db.session() as session:  # a checker that wrongly found it silent requeues it
            lease = queries.get_job(session, job_id).lease
            assert claims.recover(session, job_id, lease, "requeued under its holder by the test") == "requeued"
        send_held(here, create_app(here.settings), [(job_id, "cpu", 0)])
        first = job_json(env, job_id)["attempt_history"][0]["pid"]
        written_before = metric_steps(pg_url, job_id)[f"writer_{first}"]
        done = wait_for_status(env, job_id, FINAL, timeout=90)
        log = worker.log()
    here.db.engine.dispose()
    assert done["status"] == "succeeded" and done["attempts"] == 2, (done["error"], log[-3000:])
    second = done["attempt_history"][1]["pid"]
    steps = metric_steps(pg_url, job_id)
    assert first != second and {a["worker"] for a in done["attempt_history"]} == {"twins"}
    assert steps[f"writer_{first}"] == written_before  # not one write after its lease was taken
    assert steps[f"writer_{second}"] == list(range(1, 9))
    assert steps["step_done"] == list(range(1, 9))
    assert re.search(rf"job {job_id}: the job was taken over by another worker; this attempt stops", log)
    figure("job requeued under its holder", first_process_writes_after=0, holder_steps=len(steps[f"writer_{second}"]))


# 7, and worker names ---------------------------------------------------------------------------------------------
def test_jobs_stuck_inside_one_step_are_ended_and_the_worker_goes_on(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site), TLQ_STALL_AFTER="14")
    with WorkerProcess(env, tmp_path / "worker.log", "--concurrency", "3") as worker:
        # Past --timeout 3 while blocked on a lock; with no timeout, no step for TLQ_STALL_AFTER=14 while its
        # heartbeat thread still beats; and cancelled while stuck.
        timed = tlq_json(["submit", "stuck", "--how", "lock", "--timeout", "3"], env)["id"]
        stalled = tlq_json(["submit", "stuck", "--how", "sleep"], env)["id"]
        cancelled = tlq_json(["submit", "stuck", "--how", "lock", "--timeout", "600"], env)["id"]
        jobs = (timed, stalled, cancelled)
        running = {j: wait_for_status(env, j, ("running",) + FINAL, timeout=60) for j in jobs}
        started = time.monotonic()
        run_tlq(["cancel", cancelled], env)
        done = {j: wait_for_status(env, j, FINAL, timeout=60) for j in jobs}
        ended_after = time.monotonic() - started
        after = tlq_json(["submit", "sleep", "--steps", "2", "--step-seconds", "0.1"], env)["id"]
        next_job = wait_for_status(env, after, FINAL, timeout=60)
        alive = worker.proc.poll() is None
        # Two live workers cannot share a name; the default one is HOST-PID-XXXX.
        [listed] = tlq_json(["workers"], env)
        twin = run_tlq(["worker", "--name", listed["name"]], env, check=False, timeout=60)
    assert done[timed]["status"] == "failed", done[timed]
    assert done[timed]["error"].startswith("ran past its timeout of 3 s, stuck inside one step; the worker ended")
    assert done[stalled]["status"] == "failed", done[stalled]
    assert re.match(r"made no progress for \d+ s \(TLQ_STALL_AFTER=14\) .*the worker ended it", done[stalled]["error"])
    assert (done[cancelled]["status"], done[cancelled]["error"]) == ("cancelled", "cancelled on request")
    assert "did not stop within 10 s of its cancel; the worker ended its process" in worker.log()
    for job in running.values():  # the stuck processes are gone, and the pool runs the next job
        assert not Path(f"/proc/{job['attempt_history'][0]['pid']}").exists()
    assert next_job["status"] == "succeeded" and alive
    figure("jobs stuck in one step (timeout 3 s, stall 14 s, cancel)", running_to_all_ended_s=ended_after)
    assert re.fullmatch(r".+-\d+-[0-9a-f]{4}", listed["name"])
    assert twin.returncode == 2
    assert twin.stderr.strip().splitlines() == [
        f"Error: a live worker is already named {listed['name']!r} (host {listed['hostname']}, pid {listed['pid']}); "
        "give this one another --name, or leave --name out for a unique default"
    ]
