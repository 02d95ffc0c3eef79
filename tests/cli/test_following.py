"""Following jobs and workers from the CLI, against a real SQLite database: `tlq wait`'s exit code, the live
window of `tlq workers`, `tlq backbones --filter 'job:*'` and the cap on a sweep's size."""

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import update

from tlq.cli.main import cli
from tlq.config import Settings
from tlq.db import JobStatus, claims, queries
from tlq.db.clock import db_now
from tlq.env import Environment


def invoke(home, *args):
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture
def env(home):
    environment = Environment(Settings.load(home=home, environ={}))
    environment.db.ensure_schema()
    return environment


def job_in(env, status: JobStatus | None) -> int:
    """A job row that ended with ``status`` (None: still queued)."""
    with env.db.session() as session:
        job_id = queries.create_job(session, task="feature-extract", params={}).id
    if status is None:
        return job_id
    with env.db.session() as session:
        if status is JobStatus.CANCELLED:
            assert claims.request_cancel(session, job_id) == "cancelled"
        else:
            lease = claims.claim(session, job_id, "w")
            assert claims.finish(session, job_id, lease, status, "boom" if status is JobStatus.FAILED else None)
    return job_id


def test_wait_exits_0_only_when_the_job_succeeded(env, home):
    codes = {status: invoke(home, "wait", job_in(env, JobStatus(status))).exit_code for status in JobStatus.final()}
    assert codes == {"succeeded": 0, "failed": 1, "cancelled": 1}
    queued = invoke(home, "wait", job_in(env, None), "--timeout", "0.5")
    assert queued.exit_code == 1 and "is still queued after 0.5 s" in queued.stderr


def test_jobs_lists_newest_first_filtered_and_limited(env, home):
    done, failed, queued = job_in(env, JobStatus.SUCCEEDED), job_in(env, JobStatus.FAILED), job_in(env, None)
    assert [j["id"] for j in json.loads(invoke(home, "jobs", "--json").stdout)] == [queued, failed, done]
    assert [j["id"] for j in json.loads(invoke(home, "jobs", "--limit", "2", "--json").stdout)] == [queued, failed]
    assert [j["id"] for j in json.loads(invoke(home, "jobs", "--status", "failed", "--json").stdout)] == [failed]


def register(env, name: str, seen_ago: float, queues: str = "cpu") -> None:
    fields = dict(hostname="h", pid=1, queues=queues, device="cpu", concurrency=1)
    with env.db.session() as session:
        assert queries.register_worker(session, name=name, instance=name, **fields) is None
    with env.db.session() as session:
        session.execute(
            update(queries.WorkerRecord).where(queries.WorkerRecord.name == name).values(last_seen=db_now(-seen_ago))
        )


def test_workers_lists_those_that_reported_in_during_the_last_30_s(env, home):
    for name, ago in (("now", 0), ("25s-ago", 25), ("35s-ago", 35)):
        register(env, name, ago)
    live = json.loads(invoke(home, "workers", "--json").stdout)
    assert sorted(w["name"] for w in live) == ["25s-ago", "now"]
    every = {w["name"]: w["status"] for w in json.loads(invoke(home, "workers", "--all", "--json").stdout)}
    assert every == {"now": "online", "25s-ago": "online", "35s-ago": "offline"}


def test_auto_routes_to_a_gpu_worker_only_while_it_reported_in_within_30_s(env):
    from tlq.jobs.submit import route

    register(env, "gpu-35s-ago", 35, queues="gpu,cpu")
    assert route("auto", env) == "cpu"
    register(env, "gpu-25s-ago", 25, queues="gpu,cpu")
    assert route("auto", env) == "gpu"


def test_backbones_filter_job_star_lists_the_models_that_jobs_trained(trained):
    rows = json.loads(invoke(trained.home, "backbones", "--filter", "job:*", "--json").stdout)
    with trained.env.db.read_session() as session:
        finetuned = queries.list_jobs(session, task="finetune", status="succeeded", limit=None)
        expected = {f"job:{job.id}" for job in finetuned}
    assert trained.backbone in expected and {r["name"] for r in rows} == expected  # and no timm model
    mine = next(r for r in rows if r["name"] == trained.backbone)
    assert mine["source"] == "job" and mine["description"].startswith("test_resnet fine-tuned on 5 classes, val_acc")


def test_a_sweep_larger_than_max_jobs_is_refused_and_queues_nothing(home, digits_dir):
    base = ["sweep", "finetune", "--backbone", "test_resnet", "--no-pretrained", "--data", digits_dir]
    over_default = invoke(home, *base, "--seed", ",".join(str(s) for s in range(101)))
    assert over_default.exit_code == 2 and "this sweep makes 101 jobs, more than --max-jobs 100" in over_default.stderr
    over = invoke(home, *base, "--lr", "1e-3,1e-4,1e-5", "--batch-size", "8,16", "--max-jobs", "5")
    assert over.exit_code == 2 and "makes 6 jobs, more than --max-jobs 5" in over.stderr
    assert json.loads(invoke(home, "jobs", "--json").stdout) == []
    assert not (home / "broker.sqlite").exists()
