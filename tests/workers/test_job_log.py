"""A job's own log lines become its ``job.log`` artifact (what `tlq ui` shows on the job's page): kept, masked and
bounded, with the error of a failed task, and never written for a job that may write no more."""

from __future__ import annotations

import pytest

from tests.workers.test_execute import job_of, new_job, registry_with
from tlq.config import Settings
from tlq.env import Environment
from tlq.workers.execute import execute_job
from tlq.workers.job_log import MAX_LINES


@pytest.fixture
def env(tmp_path):
    environment = Environment(Settings.load(home=tmp_path, environ={}))
    yield environment
    environment.db.engine.dispose()


def logged(env, job_id: int) -> str | None:
    job = job_of(env, job_id)
    paths = [a["path"] for a in job["artifacts"] if a["kind"] == "log"]
    return open(paths[0]).read() if paths else None


def test_the_lines_a_task_logs_become_its_job_log_with_secrets_masked(env):
    def run(ctx, params):
        ctx.log.info("epoch %d: loss %.2f", 1, 0.5)
        ctx.log.warning("reading postgresql://tlq:hunter2@db/tlq")
        ctx.log.debug("not kept: below INFO")

    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(run)) == "succeeded"
    text = logged(env, job_id)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[0].endswith("INFO epoch 1: loss 0.50")
    assert "hunter2" not in text and "WARNING reading postgresql://tlq:***@db/tlq" in text
    (artifact,) = job_of(env, job_id)["artifacts"]
    assert artifact["path"].endswith(f"/{job_id}/job.log")


def test_a_failed_task_logs_its_error_last_and_a_silent_task_writes_no_log(env):
    def fails(ctx, params):
        ctx.log.info("starting")
        raise RuntimeError("the disk is full")

    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(fails)) == "failed"
    assert logged(env, job_id).splitlines()[-1] == "ERROR RuntimeError: the disk is full"

    silent = new_job(env)
    assert execute_job(env, silent, "w", tasks=registry_with(lambda ctx, params: None)) == "succeeded"
    assert job_of(env, silent)["artifacts"] == []


def test_a_long_log_keeps_its_first_lines_and_says_how_many_it_left_out(env):
    def chatty(ctx, params):
        for i in range(MAX_LINES + 25):
            ctx.log.info("line %d", i)

    job_id = new_job(env)
    execute_job(env, job_id, "w", tasks=registry_with(chatty))
    lines = logged(env, job_id).splitlines()
    assert len(lines) == MAX_LINES + 1 and lines[-1].startswith("... 25 more lines not kept")


def test_a_cancelled_job_writes_no_log(env):
    from tlq.client import Client

    def cancelled(ctx, params):
        ctx.log.info("working")
        Client(settings=env.settings).cancel(ctx.job_id)
        ctx.heartbeat()  # the cancel reaches the attempt
        while True:
            ctx.progress(1, 2)

    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(cancelled), heartbeat_every=0.05) == "cancelled"
    assert logged(env, job_id) is None
