"""Routing and submission against real databases (SQLite; PostgreSQL and Redis where the test says)."""

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


def test_a_job_published_as_the_database_went_away_is_returned_and_its_send_hold_kept(
    tmp_path, pg_url, redis_url, monkeypatch
):
    """The publish went through, then PostgreSQL became unreachable before the job could be marked sent: submit
    returns the job (it is queued, its message in the broker), not an error that would make the user submit it
    again; its send hold stays, so a live worker sends it again should that message be lost."""
    import redis
    from PIL import Image

    import tlq.workers.app as workers_app
    from tests.support import ToggleProxy
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import submit
    from tlq.workers.app import create_app

    data = tmp_path / "data" / "one"
    data.mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(data / "a.png")
    relay = ToggleProxy(5432).up()
    url = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{relay.port}")
    env = Environment(Settings.load(home=tmp_path / "home", database_url=url, broker_url=redis_url, environ={}))
    app = create_app(env.settings)
    published = workers_app.publish

    def publish_then_outage(*args, **kwargs):
        published(*args, **kwargs)
        relay.down()

    monkeypatch.setattr(workers_app, "publish", publish_then_outage)
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        pretrained=False,
        device="cpu",
        params={"data": str(data.parent)},
    )
    try:
        job_id = submit(env, spec, app=app)
    finally:
        relay.up()
    with env.db.read_session() as session:
        job = queries.get_job(session, job_id)
        assert (job.status, job.dispatched_at) == ("queued", None) and job.sending_since is not None
    broker = redis.Redis.from_url(redis_url)
    messages = [m for key in broker.scan_iter("cpu*") if broker.type(key) == b"list" for m in broker.lrange(key, 0, -1)]
    assert len(messages) == 1 and f"[{job_id}]".encode() in messages[0]  # its one message, in kombu's priority list
    env.db.engine.dispose()
    relay.down()
