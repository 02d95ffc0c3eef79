"""execute_job in this process on real SQLite and PostgreSQL databases: what reaches the row when the task's
results are refused, when it is interrupted, and when a claim's reply is lost."""

import pytest

from tlq.config import Settings
from tlq.db import claims, queries
from tlq.env import Environment
from tlq.plugins import TaskParams, TaskPlugin
from tlq.plugins.registry import Registry
from tlq.workers.execute import execute_job


@pytest.fixture(params=["sqlite", "postgresql"])
def env(request, tmp_path):
    database_url = None if request.param == "sqlite" else request.getfixturevalue("pg_url")
    environment = Environment(Settings.load(home=tmp_path, database_url=database_url, environ={}))
    yield environment
    environment.db.engine.dispose()


class NoParams(TaskParams):
    pass


def registry_with(run) -> Registry:
    tasks = Registry("tlq.no-such-group", "task", "tlq tasks")
    tasks.register(
        "probe", lambda: TaskPlugin(name="probe", summary="", params=NoParams, run=run, needs_backbone=False)
    )
    return tasks


def new_job(env) -> int:
    with env.db.session() as session:
        return queries.create_job(session, task="probe", params={}, queue="local").id


def job_of(env, job_id):
    with env.db.read_session() as session:
        return queries.job_as_dict(session, queries.get_job(session, job_id), env.settings.artifacts_dir)


def test_a_record_the_database_refuses_fails_the_job_and_keeps_the_other_results(env):
    def run(ctx, params):
        ctx.metric("val_acc", 0.9, step=1)
        # An artifact kind longer than its column: PostgreSQL refuses the record; SQLite does not check lengths.
        ctx.artifacts.write_text("k" * 80, "notes.txt", "hello")
        ctx.metric("val_acc", 0.95, step=2)

    job_id = new_job(env)
    execute_job(env, job_id, "w", tasks=registry_with(run))
    job = job_of(env, job_id)
    assert job["metrics"] == {"val_acc": 0.95}  # the good writes of the same batch are kept
    if env.db.engine.dialect.name == "postgresql":
        assert job["status"] == "failed" and job["error"].startswith("could not record the job's results:")
    else:
        assert job["status"] == "succeeded" and job["artifacts"][0]["kind"] == "k" * 80


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("loss", float("nan"), "finite numbers only"),
        ("x" * 65, 1.0, "1 to 64 characters"),
        ("loss", float("inf"), "finite numbers only"),
    ],
)
def test_metrics_the_database_cannot_hold_fail_the_job_with_a_clear_reason(env, name, value, reason):
    def run(ctx, params):
        ctx.metric(name, value, step=3)

    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(run)) == "failed"
    error = job_of(env, job_id)["error"]
    assert error.startswith("ValueError: metric") and reason in error


def test_an_interrupted_run_does_not_stay_running(env):
    def run(ctx, params):
        ctx.metric("step_done", 1, step=1)
        raise KeyboardInterrupt  # Ctrl-C in `tlq run`

    job_id = new_job(env)
    with pytest.raises(KeyboardInterrupt):
        execute_job(env, job_id, "w", tasks=registry_with(run))
    job = job_of(env, job_id)
    assert job["status"] == "cancelled" and job["error"].startswith("interrupted")
    assert job["metrics"] == {"step_done": 1.0}


def test_a_local_job_found_silent_fails_instead_of_waiting_on_a_queue_no_worker_reads(env):
    job_id = new_job(env)
    with env.db.session() as session:
        lease = claims.claim(session, job_id, "local-w")
    with env.db.session() as session:
        assert claims.recover(session, job_id, lease, "no heartbeat for 61 s from worker local-w") == "failed"
    job = job_of(env, job_id)
    assert job["status"] == "failed"
    assert "it ran in `tlq run` or `tlq.client.track`, which no worker can resume" in job["error"]


def test_a_claim_whose_reply_was_lost_is_still_this_workers(env):
    job_id = new_job(env)
    lease = claims.new_lease()
    with env.db.session() as session:
        assert claims.claim(session, job_id, "w", lease=lease) == lease
    with env.db.session() as session:  # the retry after the lost reply
        assert claims.claim(session, job_id, "w", lease=lease) == lease
        assert claims.claim(session, job_id, "w") is None  # any other claim still loses
    assert job_of(env, job_id)["attempts"] == 1


def test_a_password_in_an_exception_never_reaches_the_job_row(env):
    def run(ctx, params):
        raise ConnectionError("could not connect to postgresql://tlq:s3cr3t/pw@db.internal:5432/tlq?password=hunter2")

    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(run)) == "failed"
    job = job_of(env, job_id)
    assert job["error"].startswith("ConnectionError: could not connect to postgresql://tlq:")
    assert "s3cr3t" not in job["error"] and "hunter2" not in job["error"] and "db.internal:5432/tlq" in job["error"]


def test_worker_logs_mask_passwords_in_messages_and_tracebacks():
    import logging

    from tlq.workers.app import SecretsFilter

    try:
        raise OSError("redis://:hunter2@broker:6379/0 refused")
    except OSError:
        import sys

        exc_info = sys.exc_info()
    record = logging.LogRecord(
        "tlq", logging.ERROR, __file__, 1, "sending to %s failed", ("rediss://u:p@ss@h/0",), exc_info
    )
    assert SecretsFilter().filter(record)
    text = logging.Formatter().format(record)
    assert "hunter2" not in text and "p@ss" not in text and "sending to rediss://u:" in text and "OSError" in text


def test_a_device_that_cannot_even_be_described_still_runs_or_fails_the_job_never_strands_it(env, monkeypatch):
    import tlq.workers.execute as execute

    def broken(device):
        raise RuntimeError("CUDA driver initialization failed")

    monkeypatch.setattr(execute, "device_label", broken)
    ran = []
    job_id = new_job(env)
    assert execute_job(env, job_id, "w", tasks=registry_with(lambda ctx, params: ran.append(ctx.device))) == "succeeded"
    job = job_of(env, job_id)
    assert ran == ["cpu"] and job["status"] == "succeeded" and job["ran_on"] is None  # only the label is lost


def test_what_a_job_runs_on_and_the_workers_current_job_are_recorded_with_the_claim(env):
    from tlq.client.workers_view import worker_rows

    seen = []

    def run(ctx, params):
        with env.db.read_session() as session:  # while it runs, before the keeper has written anything
            ran_on = queries.get_job(session, ctx.job_id).ran_on
        (worker,) = (w for w in worker_rows(env) if w["name"] == "w")
        seen.append((ran_on, worker["current_job"], worker["current_jobs"]))

    with env.db.session() as session:
        queries.register_worker(session, "w", "instance", hostname="h", pid=1, queues="local", device="cpu")
    job_id = new_job(env)
    execute_job(env, job_id, "w", tasks=registry_with(run))
    assert seen == [(f"cpu ({__import__('os').cpu_count()} cores)", job_id, [job_id])]
    (worker,) = (w for w in worker_rows(env) if w["name"] == "w")  # and gone with the outcome
    assert worker["current_job"] is None and worker["current_jobs"] == []


def test_a_worker_that_runs_many_jobs_keeps_no_logger_per_job(env):
    """Each job logs through a logger of its own (its lines become its job.log); a pool process that has run
    thousands of jobs must not keep thousands of loggers (each setLevel in the process walks them all)."""
    import logging

    def run(ctx, params):
        ctx.log.info("job %s ran", ctx.job_id)
        ctx.artifacts.write_text("probe", "out.txt", "done")

    tasks = registry_with(run)
    assert execute_job(env, new_job(env), "w1", tasks=tasks) == "succeeded"  # the first job's imports done
    before = len(logging.Logger.manager.loggerDict)
    ids = [new_job(env) for _ in range(5)]
    assert [execute_job(env, job_id, "w1", tasks=tasks) for job_id in ids] == ["succeeded"] * 5
    assert len(logging.Logger.manager.loggerDict) == before
    logged = (env.settings.artifacts_dir / str(ids[-1]) / "job.log").read_text()
    assert f"job {ids[-1]} ran" in logged  # its lines still reach its job.log
