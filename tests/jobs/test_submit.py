"""Routing and submission against a real SQLite database."""

import pytest

from tlq.config import Settings
from tlq.db import queries
from tlq.env import Environment
from tlq.jobs.submit import route


@pytest.fixture
def env(tmp_path):
    return Environment(Settings.load(home=tmp_path, environ={}))


def register(env, name, queues, device):
    with env.db.session() as session:
        holder = queries.register_worker(
            session, name=name, instance=name, hostname="h", pid=1, queues=queues, device=device, concurrency=1
        )
    assert holder is None


def test_explicit_devices_pick_their_queue(env):
    assert route("cuda", env) == "gpu"
    assert route("cpu", env) == "cpu"


def test_auto_takes_gpu_only_while_a_gpu_worker_is_live(env):
    register(env, "cpu-1", "cpu", "cpu (2 cores)")
    assert route("auto", env) == "cpu"
    register(env, "gpu-1", "gpu,cpu", "cuda (NVIDIA H200)")
    assert route("auto", env) == "gpu"
    with env.db.session() as session:
        queries.touch_worker(session, "gpu-1", status="offline")
    assert route("auto", env) == "cpu"


def test_a_retry_asks_for_exactly_what_its_job_was_submitted_with(env, tmp_path):
    from tlq.jobs.spec import JobSpec

    weights = tmp_path / "w.safetensors"
    spec = JobSpec(
        task="finetune",
        backbone="resnet18",
        weights=weights,
        pretrained=False,
        device="cpu",
        priority=7,
        name="run-a",
        max_attempts=5,
        timeout=90.0,
        tags={"k": "v"},
        params={"data": "/d", "epochs": 2},
        group_id=None,
    )
    with env.db.session() as session:
        job = queries.create_job(session, **spec.row_fields("cpu", spec.params))
        job_id = job.id
    with env.db.read_session() as session:
        again = JobSpec.of_job(queries.get_job(session, job_id))
    # every option survives the row; the retry's parent is the job it retries
    assert again == spec.model_copy(update={"weights": weights.resolve(), "parent_id": job_id})
    assert set(JobSpec.model_fields) - {"parent_id"} <= {*spec.model_dump(exclude_unset=True)}
