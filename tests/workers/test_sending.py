"""Sending jobs so that none is lost, against a real Redis and a real job database."""

import uuid

import pytest
import redis

from tlq.config import Settings
from tlq.db import claims, queries
from tlq.env import Environment
from tlq.workers.app import create_app
from tlq.workers.sending import send_unsent


@pytest.fixture
def no_info_redis(redis_url):
    """A Redis user whose ACL refuses INFO (as managed Redis services and least-privilege setups do)."""
    admin = redis.Redis.from_url(redis_url)
    user, password = f"tlq-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin.acl_setuser(
        user, enabled=True, passwords=[f"+{password}"], keys=["*"], channels=["*"], commands=["+@all", "-info"]
    )
    yield redis_url.replace("redis://", f"redis://{user}:{password}@")
    admin.acl_deluser(user)
    admin.close()


def test_unsent_jobs_are_sent_even_when_the_broker_will_not_say_when_it_started(tmp_path, no_info_redis):
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis.Redis.from_url(no_info_redis).info("server")
    env = Environment(Settings.load(home=tmp_path, broker_url=no_info_redis, environ={}))
    with env.db.session() as session:  # its submitter died before it published
        job_id = queries.create_job(session, task="sleep", params={}, queue="cpu", sending_since=None).id
    assert send_unsent(env, create_app(env.settings)) == [job_id]
    with env.db.read_session() as session:
        assert queries.get_job(session, job_id).dispatched_at is not None
        assert claims.claim_sends(session) == []
    broker = redis.Redis.from_url(no_info_redis)
    messages = [m for key in broker.keys("cpu*") if broker.type(key) == b"list" for m in broker.lrange(key, 0, -1)]
    assert len(messages) == 1 and f"[{job_id}]".encode() in messages[0]  # the job id went to the cpu queue


def test_a_job_sent_again_shows_its_task_and_backbone_in_celerys_tools(tmp_path, redis_url):
    """Flower and `celery inspect` show the message's shadow name; only the job id travels as the argument."""
    import json

    env = Environment(Settings.load(home=tmp_path, broker_url=redis_url, environ={}))
    with env.db.session() as session:  # requeued, or its submitter died before it published
        job_id = queries.create_job(
            session, task="finetune", backbone="convnext_tiny.in12k", params={}, queue="cpu", sending_since=None
        ).id
    assert send_unsent(env, create_app(env.settings)) == [job_id]
    broker = redis.Redis.from_url(redis_url)
    [raw] = [m for key in broker.keys("cpu*") if broker.type(key) == b"list" for m in broker.lrange(key, 0, -1)]
    message = json.loads(raw)
    assert message["headers"]["shadow"] == f"tlq.run_job[finetune convnext_tiny.in12k #{job_id}]"
    assert message["headers"]["task"] == "tlq.run_job" and message["headers"]["argsrepr"] == f"[{job_id}]"
