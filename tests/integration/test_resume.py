"""A finetune whose worker is SIGKILLed mid-training resumes from its checkpoint on another worker."""

import datetime as dt
import time

import pytest
import sqlalchemy as sa

from tests.support import (
    WorkerProcess,
    figure,
    finetune_args,
    job_json,
    make_digits,
    tlq_env,
    tlq_json,
    wait_for_status,
)

pytestmark = pytest.mark.integration


def metric_rows(home, job_id):
    engine = sa.create_engine(f"sqlite:///{home / 'tlq.sqlite'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT name, step, time FROM metrics WHERE job_id = :j ORDER BY step, name"), {"j": job_id}
        ).all()
    engine.dispose()
    return [(name, step, dt.datetime.fromisoformat(str(t)).replace(tzinfo=dt.UTC)) for name, step, t in rows]


def test_killed_worker_job_resumes_from_its_checkpoint(tmp_path, home):
    data = make_digits(tmp_path / "data", classes=range(4), per_class=60)
    env = tlq_env(home, TLQ_STALE_AFTER="5")
    first = WorkerProcess(env, tmp_path / "w1.log", "--name", "doomed").start().wait_ready()
    try:
        job = tlq_json(finetune_args(data, epochs=8), env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # wait until two epochs are checkpointed
            shown = job_json(env, job["id"])
            if (
                any(a["kind"] == "checkpoint" for a in shown["artifacts"])
                and len({s for n, s, _ in metric_rows(home, job["id"]) if n == "val_acc"}) >= 2
            ):
                break
            time.sleep(0.2)
        else:
            raise AssertionError(f"no checkpoint after 120 s:\n{first.log()}")
        first.kill()
        first.proc.wait(10)
        killed_at = dt.datetime.now(dt.UTC)
    finally:
        first.stop()
    assert job_json(env, job["id"])["status"] == "running"  # the database still thinks so

    with WorkerProcess(env, tmp_path / "w2.log", "--name", "rescuer") as second:
        done = wait_for_status(env, job["id"], ("succeeded", "failed", "cancelled"), timeout=180)
    assert done["status"] == "succeeded", (done["error"], second.log())
    assert done["attempts"] == 2 and done["worker"] == "rescuer"
    resumed_from = int(done["metrics"]["resumed_from_epoch"])
    assert resumed_from >= 2
    rows = metric_rows(home, job["id"])
    val_acc = [(step, t) for name, step, t in rows if name == "val_acc"]
    assert [step for step, _ in val_acc] == list(range(1, 9))  # every epoch once, none duplicated
    for step, recorded in val_acc:  # epochs up to the checkpoint ran before the kill; later ones after it
        assert (recorded < killed_at) == (step <= resumed_from), (step, recorded, killed_at)
    assert f"resuming job {job['id']} after epoch {resumed_from}" in second.log()  # from the checkpoint, not anew
    finished = dt.datetime.fromisoformat(done["finished_at"])
    figure(
        "sigkill mid-finetune",
        resumed_from_epoch=resumed_from,
        attempts=done["attempts"],
        kill_to_finish_s=(finished - killed_at).total_seconds(),
        stale_after_s=5,
    )
