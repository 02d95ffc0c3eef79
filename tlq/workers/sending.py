"""Sending job ids to the broker so that none is lost: hold, publish, then confirm or release, one job at a time.

A job is confirmed sent (``dispatched_at``) only once the publish returned. A publish that fails releases the
job's send hold, and a sender that dies before confirming leaves a hold that expires (``claims.SEND_HOLD_S``);
either way the next live worker's report sends the job again. A message sent twice is harmless: the second
delivery finds the job no longer queued and is dropped.
"""

from __future__ import annotations

import datetime as dt
import logging

from celery import Celery
from sqlalchemy import select

from tlq.db import claims
from tlq.db.clock import database_time
from tlq.db.models import Job
from tlq.env import Environment
from tlq.workers.app import job_label, publish

log = logging.getLogger("tlq.worker")

CLOCK_MARGIN = dt.timedelta(seconds=5)  # messages sent this soon after a broker start may predate it


def send_held(env: Environment, app: Celery, held: list[tuple[int, str, int]]) -> list[int]:
    """Publishes jobs whose send hold the caller took; returns the ids confirmed sent.

    Each job is published, then confirmed or released on its own: one failure does not stop the others.
    """
    sent = []
    labels = _labels(env, [job_id for job_id, _, _ in held])
    for job_id, queue, priority in held:
        try:
            publish(app, job_id, queue, priority, labels.get(job_id))
        except Exception as exc:
            log.warning("job %s could not be sent to the %s queue (%s); it will be sent again", job_id, queue, exc)
            _settle(env, claims.release_send, job_id)
            continue
        _settle(env, claims.confirm_sent, job_id)
        sent.append(job_id)
    return sent


def _labels(env: Environment, job_ids: list[int]) -> dict[int, str]:
    """What each job's message is shown as in Celery's tools (``job_label``); display only, so a read that fails
    sends the jobs unlabelled rather than not at all."""
    if not job_ids:
        return {}
    try:
        with env.db.read_session() as session:
            rows = session.execute(select(Job.id, Job.task, Job.backbone).where(Job.id.in_(job_ids))).all()
    except Exception as exc:
        log.debug("could not read the labels of jobs %s (%s)", job_ids, exc)
        return {}
    return {job_id: job_label(job_id, task, backbone) for job_id, task, backbone in rows}


def _settle(env: Environment, change, job_id: int) -> None:
    try:
        with env.db.session() as session:
            change(session, job_id)
    except Exception as exc:  # the hold expires by itself; a job sent twice is run once
        log.warning("job %s: could not record its send (%s); the send hold will expire", job_id, exc)


def broker_started_at(env: Environment) -> dt.datetime | None:
    """When a Redis broker last started, by the database's clock; None for brokers that keep messages on disk."""
    broker_url = env.settings.broker_url
    if not broker_url.startswith(("redis://", "rediss://")):
        return None
    import redis

    client = redis.Redis.from_url(broker_url, socket_timeout=3, socket_connect_timeout=3)
    try:
        uptime = int(client.info("server")["uptime_in_seconds"])
    finally:
        client.close()
    with env.db.read_session() as session:
        now = database_time(session)
    return now - dt.timedelta(seconds=uptime)


def send_unsent(env: Environment, app: Celery) -> list[int]:
    """Sends again the queued jobs with no confirmed message: requeued, handed back by a stopping worker,
    left by a sender that failed or died, or queued before the Redis broker last started. Returns their ids."""
    try:
        started = broker_started_at(env)
    except Exception as exc:  # a Redis whose ACL refuses INFO, say: still send the jobs that were never sent
        log.debug("could not tell when the broker started (%s)", exc)
        started = None
    with env.db.session() as session:
        held = claims.claim_sends(session, started + CLOCK_MARGIN if started else None)
    sent = send_held(env, app, held)
    if sent:
        log.warning("sent %d queued job(s) again (no confirmed message in the broker for them)", len(sent))
    return sent
