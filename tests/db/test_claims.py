"""A job's row through claims, leases, recovery, cancel and sends, on SQLite and PostgreSQL."""

import pytest
from sqlalchemy import select, update

from tests.db.conftest import new_job
from tlq.db import JobStatus, claims, queries
from tlq.db.clock import database_time, db_now
from tlq.db.models import Attempt, Job


def claim(db, job_id, worker="w"):
    with db.session() as session:
        return claims.claim(session, job_id, worker, "host", 4242)


def row(db, job_id) -> Job:
    with db.read_session() as session:
        return queries.get_job(session, job_id)


def age_heartbeat(db, job_id, seconds):
    """Moves the job's heartbeat ``seconds`` into the past, by the database's own clock."""
    with db.session() as session:
        session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=db_now(-seconds)))


@pytest.mark.parametrize(
    ("cancel", "attempts", "max_attempts", "spend", "outcome"),
    [
        (False, 1, 3, True, "requeued"),
        (False, 3, 3, True, "failed"),
        (False, 3, 3, False, "requeued"),  # a handed-back attempt never fails the job
        (True, 1, 3, True, "cancelled"),
        (True, 3, 3, True, "cancelled"),  # a cancel wins over running out of attempts
        (True, 1, 3, False, "cancelled"),  # and over a warm shutdown's hand-back
    ],
)
def test_one_decision_for_every_recovery(cancel, attempts, max_attempts, spend, outcome):
    assert claims.decide_recovery(cancel, attempts, max_attempts, spend) == outcome
    # A job that ran in `tlq run` (queue "local") cannot be requeued: no worker reads that queue.
    local = claims.decide_recovery(cancel, attempts, max_attempts, spend, requeueable=False)
    assert local == ("cancelled" if cancel else "failed")


def test_a_stuck_job_is_ended_cancelled_when_a_cancel_was_asked_for_else_failed(db):
    cancelled, failed = new_job(db), new_job(db)
    leases = {job_id: claim(db, job_id) for job_id in (cancelled, failed)}
    with db.session() as session:
        assert claims.request_cancel(session, cancelled) == "requested"
    with db.session() as session:
        assert claims.end_overdue(session, cancelled, leases[cancelled], "stuck") == "cancelled"
        assert claims.end_overdue(session, failed, leases[failed], "stuck past its timeout") == "failed"
        assert claims.end_overdue(session, failed, leases[failed], "again") is None
    assert (row(db, cancelled).status, row(db, cancelled).error) == ("cancelled", "cancelled on request")
    assert (row(db, failed).status, row(db, failed).error) == ("failed", "stuck past its timeout")


def test_only_one_claim_wins_and_only_its_lease_can_finish(db):
    job_id = new_job(db)
    lease = claim(db, job_id, "w1")
    assert lease and len(lease) == 32
    assert claim(db, job_id, "w2") is None  # a duplicate delivery is dropped
    job = row(db, job_id)
    assert (job.status, job.worker, job.attempts, job.lease, job.process_id) == ("running", "w1", 1, lease, 4242)
    with db.session() as session:
        assert not claims.finish(session, job_id, "0" * 32, JobStatus.SUCCEEDED)
        assert claims.finish(session, job_id, lease, JobStatus.SUCCEEDED)
    with db.session() as session:  # the same final write again (its first reply was lost) counts as done
        assert claims.finish(session, job_id, lease, JobStatus.SUCCEEDED)
        assert not claims.finish(session, job_id, lease, JobStatus.FAILED)
    assert row(db, job_id).status == "succeeded"


def test_a_recovered_attempt_writes_nothing_even_under_the_same_worker_name(db):
    job_id = new_job(db)
    first = claim(db, job_id, "host-1")
    with db.session() as session:
        assert claims.recover(session, job_id, first, "frozen") == "requeued"
    second = claim(db, job_id, "host-1")  # a sibling pool process: same worker name, new lease
    assert second and second != first
    with db.session() as session:
        assert not claims.hold(session, job_id, first)
        assert not claims.lease_state(session, job_id, first).ours
        claims.update_progress(session, job_id, first, 9, 10, "stale writer")
        assert not claims.finish(session, job_id, first, JobStatus.SUCCEEDED)
        assert claims.recover(session, job_id, first, "again") is None
        assert claims.hold(session, job_id, second)
    job = row(db, job_id)
    assert (job.status, job.lease, job.attempts) == ("running", second, 2)
    assert job.progress_current is None and job.progress_stage == "requeued: frozen on attempt 1"


def test_attempts_are_recorded_with_how_each_ended(db):
    job_id = new_job(db)
    first = claim(db, job_id, "a")
    with db.session() as session:
        claims.recover(session, job_id, first, "no heartbeat for 61 s from worker a")
    second = claim(db, job_id, "b")
    with db.session() as session:
        claims.finish(session, job_id, second, JobStatus.SUCCEEDED)
    with db.read_session() as session:
        history = queries.job_as_dict(session, queries.get_job(session, job_id), "/a")["attempt_history"]
    assert [(a["attempt"], a["worker"], a["outcome"]) for a in history] == [(1, "a", "requeued"), (2, "b", "succeeded")]
    assert history[0]["reason"] == "no heartbeat for 61 s from worker a" and history[0]["pid"] == 4242
    assert history[0]["ended_at"] <= history[1]["claimed_at"]


def test_staleness_is_judged_by_the_database_clock(db):
    job_id = new_job(db, max_attempts=2)
    lease = claim(db, job_id)
    with db.session() as session:
        assert claims.recover(session, job_id, lease, "silent", stale_after_s=60) is None  # it beat just now
    age_heartbeat(db, job_id, 61)
    with db.read_session() as session:
        [held] = claims.running_jobs(session, stale_after_s=60)
        assert held.id == job_id and 60 < held.seconds_since_heartbeat < 120
    with db.session() as session:
        assert claims.recover(session, job_id, lease, "silent", stale_after_s=60) == "requeued"
    lease = claim(db, job_id)
    age_heartbeat(db, job_id, 61)
    with db.session() as session:
        assert claims.recover(session, job_id, lease, "silent", stale_after_s=60) == "failed"
    job = row(db, job_id)
    assert job.status == "failed" and job.error == (
        "silent on attempt 2 of 2; giving up (raise --max-attempts to allow more)"
    )


def test_a_hand_back_spends_no_attempt(db):
    job_id = new_job(db, max_attempts=1)
    lease = claim(db, job_id)
    with db.session() as session:
        assert claims.recover(session, job_id, lease, "released by stopping worker w", spend_attempt=False) == (
            "requeued"
        )
    job = row(db, job_id)
    assert (job.status, job.attempts, job.progress_stage) == ("queued", 0, "released by stopping worker w")


def test_cancel_wins_over_release_requeue_and_redelivery(db):
    queued, running, released = new_job(db), new_job(db), new_job(db)
    claim(db, running)
    lease = claim(db, released)
    with db.session() as session:
        assert claims.request_cancel(session, queued) == "cancelled"
        assert claims.request_cancel(session, queued) == "cancelled"
        assert claims.request_cancel(session, running) == "requested"
        assert claims.request_cancel(session, released) == "requested"
        assert claims.request_cancel(session, 10_000) == "missing"
    with db.session() as session:  # the worker of `released` shuts down right after the cancel
        assert claims.recover(session, released, lease, "released", spend_attempt=False) == "cancelled"
    assert claim(db, queued) is None  # a redelivered message of a cancelled job never starts it
    for job_id in (queued, released):
        job = row(db, job_id)
        assert (job.status, job.error) == ("cancelled", "cancelled on request") and job.finished_at


def test_a_queued_job_flagged_for_cancel_ends_cancelled_when_its_message_comes(db):
    job_id = new_job(db)
    with db.session() as session:  # the state an older tlq could leave: queued, cancel asked, never ended
        session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    assert claim(db, job_id) is None
    assert row(db, job_id).status == "cancelled"


def test_a_send_is_confirmed_only_after_the_publish_and_a_failed_one_is_sent_again(db):
    job_id = new_job(db)
    lease = claim(db, job_id)
    with db.session() as session:
        assert claims.recover(session, job_id, lease, "worker died") == "requeued"
    job = row(db, job_id)
    assert job.dispatched_at is None and job.sending_since is not None  # the recoverer holds the send
    with db.session() as session:
        assert claims.claim_sends(session) == []  # nobody else sends it meanwhile
        claims.release_send(session, job_id)  # its publish failed: the broker was down
    with db.session() as session:
        assert claims.claim_sends(session) == [(job_id, "cpu", 0)]
    with db.session() as session:
        assert claims.claim_sends(session) == []  # a second worker noticing it does not send it twice
        claims.confirm_sent(session, job_id)
    with db.session() as session:
        assert claims.claim_sends(session) == []
        assert queries.get_job(session, job_id).dispatched_at is not None


def test_a_sender_that_died_before_confirming_leaves_a_hold_that_expires(db):
    with db.session() as session:
        job_id = queries.create_job(session, task="feature-extract", params={}).id  # its submitter then died
    with db.session() as session:
        assert claims.claim_sends(session) == []
        session.execute(update(Job).where(Job.id == job_id).values(sending_since=db_now(-claims.SEND_HOLD_S - 1)))
    with db.session() as session:
        assert claims.claim_sends(session) == [(job_id, "cpu", 0)]


def test_jobs_sent_before_the_broker_restarted_are_sent_again(db):
    job_id = new_job(db)
    with db.read_session() as session:
        sent = queries.get_job(session, job_id).dispatched_at
        now = database_time(session)
    with db.session() as session:
        assert claims.claim_sends(session, broker_started=sent) == []
        assert claims.claim_sends(session, broker_started=now) == [(job_id, "cpu", 0)]


def test_a_failed_publish_at_submit_fails_the_job_with_its_reason(db):
    with db.session() as session:
        job_id = queries.create_job(session, task="feature-extract", params={}).id
    with db.session() as session:
        claims.fail_queued(session, job_id, "cannot reach the broker")
        assert claims.claim_sends(session) == []
    assert row(db, job_id).status == "failed"


def test_worker_names_cannot_be_shared_by_two_live_workers(db):
    fields = dict(hostname="h", pid=1, queues="cpu", device="cpu", concurrency=1)
    with db.session() as session:
        assert queries.register_worker(session, name="w", instance="life-1", **fields) is None
    with db.session() as session:
        holder = queries.register_worker(session, name="w", instance="life-2", **fields)
        assert holder is not None and holder.instance == "life-1"
    with db.session() as session:  # unless its process is known to be gone
        assert queries.register_worker(session, name="w", instance="life-2", is_gone=lambda r: True, **fields) is None
    with db.session() as session:
        assert not queries.touch_worker(session, "w", "life-1")  # the old life stops reporting under the name
        assert queries.touch_worker(session, "w", "life-2")
    with db.session() as session:  # a record silent for longer than the live window frees its name
        session.execute(
            update(queries.WorkerRecord)
            .where(queries.WorkerRecord.name == "w")
            .values(last_seen=db_now(-queries.WORKER_LIVE_WINDOW_S - 1))
        )
    with db.session() as session:
        assert queries.register_worker(session, name="w", instance="life-3", **fields) is None
    with db.read_session() as session:
        assert session.scalar(select(queries.WorkerRecord.instance)) == "life-3"
        assert session.scalars(select(Attempt)).all() == []
