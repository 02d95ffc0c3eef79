"""Outages with real worker processes: a broker that refuses exactly when a job is requeued, a PostgreSQL restart
and a SQLite file locked for 40 s in the middle of a finetune, a checker whose clock runs 90 s ahead, and a
cancel racing a warm shutdown."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import textwrap
import time

import pytest

from tests.support import (
    ToggleProxy,
    WorkerProcess,
    figure,
    finetune_args,
    make_digits,
    metric_steps,
    run_tlq,
    sql_rows,
    tlq_env,
    tlq_json,
    wait_for_status,
    wait_until,
)

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled")


def send_state(database_url: str, job_id: int) -> tuple:
    """(status, dispatched_at) of a job, read straight from its database."""
    return tuple(sql_rows(database_url, "SELECT status, dispatched_at FROM jobs WHERE id = :j", j=job_id)[0])


# 3 ---------------------------------------------------------------------------------------------------------------
def test_a_job_requeued_while_the_broker_refuses_is_sent_once_it_is_back(
    tmp_path, home, pg_url, redis_url, plugin_site
):
    proxy = ToggleProxy(6379).up()
    broker = redis_url.replace(":6379/", f":{proxy.port}/")
    env = tlq_env(home, database_url=pg_url, broker_url=broker, PYTHONPATH=str(plugin_site), TLQ_STALE_AFTER="4")
    # Both workers are up before the job is sent: whichever claims it is killed, the other rescues it. (Starting
    # the rescuer later let a slow start outlast the job on a loaded machine.)
    workers = {n: WorkerProcess(env, tmp_path / f"{n}.log", "--name", n).start() for n in ("alpha", "beta")}
    try:
        for worker in workers.values():
            worker.wait_ready()
        job_id = tlq_json(["submit", "sleep", "--steps", "16", "--step-seconds", "0.5"], env)["id"]
        doomed = wait_for_status(env, job_id, ("running",), timeout=60)["worker"]
        rescuer = next(n for n in workers if n != doomed)
        workers[doomed].kill()  # its heartbeat stops; the rescuer will requeue the job ...
        proxy.down()  # ... exactly while the broker refuses connections
        wait_until(lambda: send_state(pg_url, job_id)[0] != "running", 60, "the requeue")
        time.sleep(3.0)  # several reports of the rescuer, each failing to send
        status, dispatched_at = send_state(pg_url, job_id)
        assert (status, dispatched_at) == ("queued", None)  # not marked sent: nothing reached the broker
        proxy.up()
        back = time.monotonic()
        done = wait_for_status(env, job_id, FINAL, timeout=120)
        back_to_done = time.monotonic() - back
        log = workers[rescuer].log()
    finally:
        for worker in workers.values():
            worker.discard()
        proxy.down()
    assert done["status"] == "succeeded" and done["worker"] == rescuer and done["attempts"] == 2, done
    assert f"job {job_id} could not be sent to the cpu queue" in log
    figure("broker refusing while a stale job is requeued", broker_back_to_done_s=back_to_done, attempts=2)


def postgresql_cluster() -> str:
    out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=True).stdout
    return next(line.split()[0] for line in out.splitlines() if line.split()[1] == "main")


# 4 ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("outage", [pytest.param("postgresql restart", marks=pytest.mark.serial), "sqlite locked 40 s"])
def test_a_database_outage_mid_finetune_costs_no_attempt_and_no_metric(tmp_path, home, request, outage):
    data = make_digits(tmp_path / "data", classes=range(4), per_class=60)
    if outage == "postgresql restart":
        database_url = request.getfixturevalue("pg_url")
        env = tlq_env(
            home, database_url=database_url, broker_url=request.getfixturevalue("redis_url"), TLQ_STALE_AFTER="5"
        )
    else:
        database_url = f"sqlite:///{home / 'tlq.sqlite'}"
        env = tlq_env(home, TLQ_STALE_AFTER="5")
    epochs = 12
    with WorkerProcess(env, tmp_path / "worker.log", "--name", "steady") as worker:
        job_id = tlq_json(finetune_args(data, epochs=epochs), env)["id"]
        wait_until(lambda: len(metric_steps(database_url, job_id).get("val_acc", [])) >= 2, 120, "two epochs")
        before = len(metric_steps(database_url, job_id)["val_acc"])
        start = time.monotonic()
        if outage == "postgresql restart":
            subprocess.run(
                ["pg_ctlcluster", "--skip-systemctl-redirect", postgresql_cluster(), "main", "restart"],
                check=True,
                capture_output=True,
            )
        else:
            holder = sqlite3.connect(home / "tlq.sqlite", isolation_level=None, timeout=60)
            holder.execute("BEGIN EXCLUSIVE")  # a backup or a stuck process holds the write lock
            time.sleep(40)
            holder.execute("COMMIT")
            holder.close()
        outage_s = time.monotonic() - start
        done = wait_for_status(env, job_id, FINAL, timeout=240)
        log = worker.log()
    assert done["status"] == "succeeded", (done["error"], log[-3000:])
    assert done["attempts"] == 1 and len(done["attempt_history"]) == 1  # no attempt thrown away
    assert metric_steps(database_url, job_id)["val_acc"] == list(range(1, epochs + 1))  # every epoch, once
    assert "the database is unreachable" in log and "the database is back" in log  # the outage was met
    figure(
        f"{outage} mid-finetune",
        outage_s=outage_s,
        epochs_before=before,
        attempts=done["attempts"],
        epochs_recorded=len(metric_steps(database_url, job_id)["val_acc"]),
    )


SKEWED_CLOCK = '''
"""Runs this process's clock (time.time and datetime.now) ahead by TLQ_TEST_CLOCK_SKEW_S seconds."""
import datetime as _dt
import os as _os
import sys as _sys
import time as _time

_skew = float(_os.environ.get("TLQ_TEST_CLOCK_SKEW_S", "0"))
if _skew:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _time.time = lambda: _real_time() + _skew
    _time.time_ns = lambda: _real_time_ns() + int(_skew * 1e9)

    class _Ahead(_dt.datetime):
        @classmethod
        def now(cls, tz=None):
            return _dt.datetime.fromtimestamp(_time.time(), tz)

        @classmethod
        def utcnow(cls):
            return _dt.datetime.fromtimestamp(_time.time(), _dt.UTC).replace(tzinfo=None)

    _dt.datetime = _Ahead
    print(f"this process's clock runs {_skew:+g} s ahead", file=_sys.stderr)
'''


# 5 ---------------------------------------------------------------------------------------------------------------
def test_a_checker_whose_clock_runs_90_s_ahead_requeues_nothing_healthy(tmp_path, home, pg_url, redis_url, plugin_site):
    skew = tmp_path / "skew"
    skew.mkdir()
    (skew / "sitecustomize.py").write_text(textwrap.dedent(SKEWED_CLOCK))
    env = tlq_env(home, database_url=pg_url, broker_url=redis_url, PYTHONPATH=str(plugin_site), TLQ_STALE_AFTER="5")
    ahead_env = dict(env, PYTHONPATH=f"{skew}:{plugin_site}", TLQ_TEST_CLOCK_SKEW_S="90")
    with WorkerProcess(env, tmp_path / "honest.log", "--name", "honest"):
        # Longer than the test watches: however slowly the second worker starts, the job still runs while it checks.
        job_id = tlq_json(["submit", "sleep", "--steps", "600", "--step-seconds", "0.5"], env)["id"]
        wait_for_status(env, job_id, ("running",), timeout=60)
        with WorkerProcess(ahead_env, tmp_path / "ahead.log", "--name", "ahead") as ahead:
            assert "clock runs +90 s ahead" in ahead.log()
            wait_until(lambda: "checking for silent jobs" in ahead.log(), 120, "the skewed worker to start checking")
            time.sleep(10)  # two stale windows of its checks (one every 2.5 s) while the job runs
            during = tlq_json(["show", str(job_id)], env)
            seen = {w["name"]: w["seconds_since_seen"] for w in tlq_json(["workers"], env)}
            log = ahead.log()
        run_tlq(["cancel", str(job_id)], env)
        wait_for_status(env, job_id, FINAL, timeout=60)
    assert (during["status"], during["attempts"], during["worker"]) == ("running", 1, "honest"), during
    assert "requeued" not in log and "no heartbeat" not in log  # it checked while the job ran, and found nothing
    assert abs(seen["ahead"]) < 10  # it reports by the database's clock, not its own
    figure("checker clock 90 s ahead", requeued=0, attempts=during["attempts"], ahead_seen_s_ago=seen["ahead"])


# 6 ---------------------------------------------------------------------------------------------------------------
def test_a_cancel_racing_a_warm_shutdown_ends_the_job_cancelled_in_either_order(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    workers = [WorkerProcess(env, tmp_path / f"w{i}.log", "--name", f"leaving-{i}").start() for i in range(2)]
    orders = {"cancel, then SIGTERM": ("cancel", "stop"), "SIGTERM, then cancel": ("stop", "cancel")}
    try:
        for worker in workers:
            worker.wait_ready()
        held = {}
        for order in orders:  # one job on each worker; 3 s steps, so no task reaches a check of its own in between
            job_id = tlq_json(["submit", "sleep", "--steps", "10", "--step-seconds", "3"], env)["id"]
            running = wait_for_status(env, job_id, ("running",), timeout=60)
            held[order] = (job_id, next(w for w in workers if w.name == running["worker"]))
        waited = {}
        for order, (job_id, worker) in held.items():
            for action in orders[order]:
                if action == "stop":
                    worker.proc.send_signal(signal.SIGTERM)
                else:
                    run_tlq(["cancel", job_id], env)
            started = time.monotonic()
            waited[order] = run_tlq(["wait", job_id, "--timeout", "60", "--json"], env, check=False, timeout=90)
            figure(f"cancel racing a warm shutdown ({order})", wait_returned_after_s=time.monotonic() - started)
    finally:
        for worker in workers:
            worker.stop()
    for order, result in waited.items():
        job = json.loads(result.stdout)
        assert (job["status"], job["error"]) == ("cancelled", "cancelled on request"), (order, job)
