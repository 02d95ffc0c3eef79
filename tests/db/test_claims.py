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
        assert claims.hold_state(session, job_id, first, True, (9, 10, "stale writer")) is None
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


def test_progress_and_the_device_are_recorded_only_for_the_job_and_lease_that_hold(db):
    cpu_job, other, cuda_job = new_job(db), new_job(db), new_job(db, device="cuda")
    ran_on = {"cpu": "cpu (2 threads)", "auto": "cpu (2 threads)"}  # a worker that cannot give cuda
    with db.session() as session:
        won = claims.claim_job(session, cpu_job, "w", ran_on=ran_on)
        other_lease = claims.claim(session, other, "w")
        gpu_won = claims.claim_job(session, cuda_job, "w", ran_on=ran_on)
    assert won.job.ran_on == "cpu (2 threads)"  # the claimed row comes back as the claim left it
    with db.session() as session:
        assert claims.hold_state(session, cpu_job, won.lease, True, (3, 10, "epoch 1")) == claims.LeaseState(
            True, False
        )
        assert claims.hold_state(session, cpu_job, other_lease, True, (9, 9, "another job's lease")) is None
    job, untouched, cuda = row(db, cpu_job), row(db, other), row(db, cuda_job)
    assert (job.progress_current, job.progress_total, job.progress_stage) == (3, 10, "epoch 1")
    assert job.ran_on == "cpu (2 threads)"
    assert (untouched.progress_current, untouched.progress_stage, untouched.ran_on) == (None, None, None)
    assert gpu_won is not None and cuda.ran_on is None  # the job fails with why once it starts


def test_a_claim_counts_the_claims_before_it_and_a_hold_reports_a_cancel(db):
    job_id = new_job(db)
    with db.session() as session:
        first = claims.claim_job(session, job_id, "a")
    assert first.earlier_claims == 0 and first.job.status == "running" and first.job.lease == first.lease
    with db.session() as session:
        assert claims.recover(session, job_id, first.lease, "handed back", spend_attempt=False) == "requeued"
    with db.session() as session:
        second = claims.claim_job(session, job_id, "b")
    assert second.earlier_claims == 1 and second.job.attempts == 1  # a hand-back spends no attempt
    with db.session() as session:  # a claim whose reply was lost is still its own, and still counts right
        again = claims.claim_job(session, job_id, "b", lease=second.lease)
    assert (again.lease, again.earlier_claims) == (second.lease, 1)
    with db.session() as session:
        assert claims.request_cancel(session, job_id) == "requested"
    with db.session() as session:
        assert claims.hold_state(session, job_id, second.lease) == claims.LeaseState(True, True)


def test_running_jobs_are_timed_by_the_database_and_filtered_by_worker_and_silence(db):
    quiet, busy, elsewhere, waiting = new_job(db, timeout_s=30.0), new_job(db), new_job(db), new_job(db)
    leases = {job_id: claim(db, job_id, "w1") for job_id in (quiet, busy)}
    claim(db, elsewhere, "w2")
    with db.session() as session:  # quiet: claimed 100 s ago, last progress 50 s ago, last beat 40 s ago
        session.execute(
            update(Job)
            .where(Job.id == quiet)
            .values(claimed_at=db_now(-100), progress_at=db_now(-50), heartbeat_at=db_now(-40))
        )
        session.execute(update(Job).where(Job.id == busy).values(progress_at=None, claimed_at=db_now(-20)))
        claims.request_cancel(session, busy)
        session.execute(update(Job).where(Job.id == busy).values(cancel_requested_at=db_now(-5)))
    with db.read_session() as session:
        mine = {held.id: held for held in claims.running_jobs(session, worker="w1")}
        silent = [held.id for held in claims.running_jobs(session, stale_after_s=30)]
        everyone = {held.id for held in claims.running_jobs(session)}
    assert set(mine) == {quiet, busy} and everyone == {quiet, busy, elsewhere} and waiting not in everyone
    assert silent == [quiet]
    held = mine[quiet]
    assert (held.lease, held.worker, held.process_id, held.timeout_s) == (leases[quiet], "w1", 4242, 30.0)
    assert 99 < held.seconds_running < 110 and 49 < held.seconds_since_progress < 60
    assert 39 < held.seconds_since_heartbeat < 50 and held.seconds_since_cancel is None
    cancelled = mine[busy]
    assert 19 < cancelled.seconds_since_progress < 30  # no progress yet: counted from the claim
    assert 4 < cancelled.seconds_since_cancel < 15
    with db.session() as session:  # a beat never written counts as silent, and as endlessly long ago
        session.execute(update(Job).where(Job.id == busy).values(heartbeat_at=None))
    with db.read_session() as session:
        [never] = [h for h in claims.running_jobs(session, stale_after_s=30) if h.id == busy]
    assert never.seconds_since_heartbeat == float("inf")


def test_silence_means_a_heartbeat_older_than_the_window(db):
    job_id = new_job(db)
    claim(db, job_id)
    age_heartbeat(db, job_id, 29)
    with db.read_session() as session:
        assert claims.running_jobs(session, stale_after_s=30) == []
        assert [h.id for h in claims.running_jobs(session, stale_after_s=28)] == [job_id]


def test_a_failed_publish_or_send_touches_only_its_own_queued_job(db):
    failing, bystander, other = new_job(db), new_job(db), new_job(db)
    running = new_job(db)
    claim(db, running)
    with db.session() as session:
        session.execute(update(Job).values(sending_since=db_now()))
    with db.session() as session:
        claims.fail_queued(session, failing, "the broker refused it: postgresql://tlq:hunter2@db/tlq")
        claims.fail_queued(session, running, "too late: it runs")
        claims.release_send(session, bystander)
        claims.release_send(session, running)
    job = row(db, failing)
    assert job.status == "failed" and job.finished_at is not None and job.sending_since is None
    assert "hunter2" not in job.error and job.error.startswith("the broker refused it")
    assert row(db, running).status == "running" and row(db, running).sending_since is not None
    assert row(db, bystander).status == "queued" and row(db, bystander).sending_since is None
    assert row(db, other).status == "queued" and row(db, other).sending_since is not None  # its sender still holds it


def attempts_of(db, job_id) -> list[Attempt]:
    with db.read_session() as session:
        return list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))


def test_a_claim_records_when_the_job_started_and_clears_what_the_last_attempt_left(db):
    job_id = new_job(db)
    with db.session() as session:  # what an earlier attempt or sender left on the row
        session.execute(update(Job).where(Job.id == job_id).values(error="old error", sending_since=db_now()))
    first = claim(db, job_id)
    job = row(db, job_id)
    assert job.started_at and job.claimed_at and job.heartbeat_at and job.progress_at
    assert job.error is None and job.sending_since is None
    started = job.started_at
    with db.session() as session:
        claims.recover(session, job_id, first, "frozen")
        session.execute(update(Job).where(Job.id == job_id).values(claimed_at=db_now(-50), progress_at=db_now(-50)))
    claim(db, job_id)
    again = row(db, job_id)
    assert again.started_at == started  # when it first started, not when this attempt did
    with db.read_session() as session:
        [held] = claims.running_jobs(session)
    assert held.seconds_running < 40 and held.seconds_since_progress < 40  # this attempt's clock starts anew


def test_a_claim_without_a_process_id_records_none(db):
    job_id = new_job(db)
    with db.session() as session:
        assert claims.claim(session, job_id, "w")
    assert row(db, job_id).process_id is None  # never a pid the deadline scan could end by mistake
    [attempt] = attempts_of(db, job_id)
    assert (attempt.hostname, attempt.worker) == ("", "w")


def test_only_the_stopping_worker_itself_is_refused_jobs(db):
    fields = dict(hostname="h", pid=1, queues="cpu", device="cpu", concurrency=1)
    with db.session() as session:
        queries.register_worker(session, name="leaving", instance="i1", **fields)
        queries.register_worker(session, name="staying", instance="i2", **fields)
    with db.session() as session:
        assert queries.touch_worker(session, "leaving", "i1", status="stopping")
    first, second = new_job(db), new_job(db)
    assert claim(db, first, "leaving") is None
    assert row(db, first).status == "queued" and not row(db, first).cancel_requested  # left for another worker
    assert claim(db, first, "staying") and claim(db, second, "unregistered")


def test_a_retried_claim_is_recognized_only_by_its_own_job_and_lease(db):
    first, second, done = new_job(db), new_job(db), new_job(db)
    lease = claim(db, first)
    with db.session() as session:
        assert claims.claim(session, first, "w", lease=lease) == lease  # its reply was lost: still ours
        assert claims.claim(session, second, "w2") is not None
    with db.session() as session:
        assert claims.claim(session, second, "w", lease=lease) is None  # another job's lease is no claim of this
    done_lease = claim(db, done)
    with db.session() as session:
        claims.finish(session, done, done_lease, JobStatus.SUCCEEDED)
    with db.session() as session:
        assert claims.claim(session, done, "w", lease=done_lease) is None  # an ended job is nobody's any more


def test_a_cancel_flag_ends_only_its_own_queued_job_at_a_claim(db):
    flagged, other_flagged, running = new_job(db), new_job(db), new_job(db)
    claim(db, running)
    with db.session() as session:
        session.execute(update(Job).where(Job.id.in_((flagged, other_flagged, running))).values(cancel_requested=True))
    assert claim(db, flagged) is None
    job = row(db, flagged)
    assert (job.status, job.error) == ("cancelled", "cancelled on request") and job.finished_at is not None
    assert row(db, other_flagged).status == "queued"  # ended when its own message comes
    assert claim(db, running) is None and row(db, running).status == "running"  # its worker stops it


def test_every_ending_records_when_and_why_on_the_job_and_its_attempt(db):
    failed, cancelled, local = new_job(db, max_attempts=1), new_job(db), new_job(db, queue="local")
    spent = new_job(db, max_attempts=1)
    leases = {job_id: claim(db, job_id) for job_id in (failed, cancelled, local, spent)}
    long_reason = "x" * 5000
    with db.session() as session:
        claims.request_cancel(session, cancelled)
        assert claims.recover(session, cancelled, leases[cancelled], "frozen") == "cancelled"
        assert claims.recover(session, local, leases[local], "its process died") == "failed"
        assert claims.finish(session, failed, leases[failed], JobStatus.FAILED, long_reason)
        assert claims.recover(session, spent, leases[spent], "frozen") == "failed"  # its one attempt is spent
    for job_id in (failed, cancelled, local, spent):
        assert row(db, job_id).finished_at is not None, job_id
    assert row(db, local).error == (
        "its process died; it ran in `tlq run` or `tlq.client.track`, which no worker can resume: run it again"
    )
    [attempt] = attempts_of(db, failed)
    assert attempt.outcome == "failed" and len(attempt.reason) == 4000 and attempt.ended_at is not None
    other = new_job(db)
    other_lease = claim(db, other)
    with db.session() as session:
        claims.finish(session, other, other_lease, JobStatus.SUCCEEDED)
    assert attempts_of(db, failed)[0].outcome == "failed"  # one attempt's ending never rewrites another's


def test_a_requeued_job_is_nobodys_and_a_handed_back_attempt_is_recorded_as_released(db):
    requeued, released = new_job(db), new_job(db)
    leases = {job_id: claim(db, job_id, "w1") for job_id in (requeued, released)}
    long_reason = "r" * 300
    with db.session() as session:
        assert claims.recover(session, requeued, leases[requeued], long_reason) == "requeued"
        assert claims.recover(session, released, leases[released], "released by w1", spend_attempt=False) == "requeued"
    job = row(db, requeued)
    assert (job.worker, job.lease, job.process_id, job.dispatched_at) == (None, None, None, None)
    assert len(job.progress_stage) == 255 and job.attempts == 1
    assert [a.outcome for a in attempts_of(db, requeued)] == ["requeued"]
    assert [a.outcome for a in attempts_of(db, released)] == ["released"]


def test_a_local_job_is_never_sent_and_each_send_hold_is_taken_job_by_job(db):
    with db.session() as session:
        local = queries.create_job(session, task="feature-extract", params={}, queue="local").id
        first = queries.create_job(session, task="feature-extract", params={}).id
        second = queries.create_job(session, task="feature-extract", params={}).id
    with db.session() as session:
        session.execute(update(Job).values(sending_since=db_now(-claims.SEND_HOLD_S - 1)))  # their senders died
    with db.session() as session:
        assert sorted(job for job, _, _ in claims.claim_sends(session)) == [first, second]
    assert row(db, local).sending_since is not None and row(db, local).dispatched_at is None


def test_a_message_handed_back_is_sent_again_and_only_that_jobs(db):
    handed, kept, running = new_job(db), new_job(db), new_job(db)
    claim(db, running)
    with db.session() as session:
        session.execute(update(Job).where(Job.id == handed).values(sending_since=db_now()))  # a send in flight
    with db.session() as session:
        claims.hand_back_message(session, handed)
        claims.hand_back_message(session, running)
    assert row(db, handed).dispatched_at is None and row(db, handed).sending_since is None
    assert row(db, kept).dispatched_at is not None
    assert row(db, running).dispatched_at is not None
    with db.session() as session:
        assert [job for job, _, _ in claims.claim_sends(session)] == [handed]


def test_a_heartbeat_moves_the_progress_time_only_when_the_task_moved(db):
    job_id = new_job(db)
    lease = claim(db, job_id)
    with db.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(claimed_at=db_now(-100), progress_at=db_now(-100), heartbeat_at=db_now(-100))
        )
    with db.session() as session:
        assert claims.hold(session, job_id, lease)
    with db.read_session() as session:
        [held] = claims.running_jobs(session)
    assert held.seconds_since_heartbeat < 50 and held.seconds_since_progress > 90
    with db.session() as session:
        assert claims.hold(session, job_id, lease, progressed=True)
    with db.read_session() as session:
        [held] = claims.running_jobs(session)
    assert held.seconds_since_progress < 50


def test_the_lease_state_of_a_job_that_is_gone_is_not_ours_and_not_cancelled(db):
    with db.read_session() as session:
        assert claims.lease_state(session, 10_000, "0" * 32) == claims.LeaseState(False, False)


def test_a_cancel_is_timed_once_and_never_touches_an_ended_job(db):
    running, done = new_job(db), new_job(db)
    claim(db, running)
    done_lease = claim(db, done)
    with db.session() as session:
        claims.finish(session, done, done_lease, JobStatus.SUCCEEDED)
    with db.session() as session:
        assert claims.request_cancel(session, running) == "requested"
    assert row(db, running).cancel_requested_at is not None
    with db.session() as session:
        session.execute(update(Job).where(Job.id == running).values(cancel_requested_at=db_now(-20)))
    with db.session() as session:
        assert claims.request_cancel(session, running) == "requested"  # asked again: the first time counts
        assert claims.request_cancel(session, done) == "succeeded"
    with db.read_session() as session:
        [held] = claims.running_jobs(session)
    assert held.seconds_since_cancel > 15
    assert not row(db, done).cancel_requested and row(db, done).cancel_requested_at is None


def test_recovery_spends_an_attempt_unless_told_otherwise():
    assert claims.decide_recovery(False, 3, 3) == "failed"


def test_the_database_clock_with_an_offset_is_compiled_once_per_offset_and_never_confused(db):
    """db_now takes part in SQLAlchemy's statement cache (statements are not compiled again on every call): two
    statements that differ only in the offset must still ask for their own times."""
    import datetime as dt

    from sqlalchemy import select as sql_select

    with db.read_session() as session:
        now = database_time(session)
        for offset in (-60, -3600, -60):  # the first form again: served from the cache, still right
            shifted = session.scalar(sql_select(db_now(offset)))
            assert abs((now - shifted) - dt.timedelta(seconds=-offset)) < dt.timedelta(seconds=5)
    statement = select(Job.id).where(Job.heartbeat_at < db_now(-5))
    assert statement._generate_cache_key() is not None  # cacheable
    assert statement._generate_cache_key() != select(Job.id).where(Job.heartbeat_at < db_now(-6))._generate_cache_key()


def test_a_claim_in_a_session_that_loaded_the_job_before_sees_the_row_it_wrote(db):
    job_id = new_job(db)
    with db.session() as session:
        before = queries.get_job(session, job_id)  # loaded, and held by this session's identity map
        assert before.status == "queued"
        lease = claims.claim(session, job_id, "w", "host", 1)
        job = queries.get_job(session, job_id)
        assert (job.status, job.attempts, job.lease) == ("running", 1, lease)
        assert job is before  # the session's own copy, read again
    with db.read_session() as session:
        assert [a.number for a in queries.job_attempts(session, job_id)] == [1]


def test_a_claim_that_waited_for_the_row_counts_the_claim_it_waited_for(db):
    """On PostgreSQL a claim's UPDATE that waits for the row's lock keeps the snapshot it started with; the
    earlier claims are counted in a statement after it, so a claim made and requeued meanwhile still counts
    (else the job's resumable files would be set aside as another's)."""
    import threading
    import time

    job_id = new_job(db)
    first_session = db._sessions()
    first_session.begin()
    first = claims.claim(first_session, job_id, "a", "h", 1)
    first_session.flush()  # the row is locked, the first attempt written, nothing committed yet
    won = {}

    def second_claim():
        with db.session() as session:
            won["claim"] = claims.claim_job(session, job_id, "b", "h", 2)

    waiting = threading.Thread(target=second_claim)
    waiting.start()
    time.sleep(0.5)  # PostgreSQL: the second UPDATE now waits for the row; SQLite: for the write lock
    assert claims.recover(first_session, job_id, first, "its worker died at once") == "requeued"
    first_session.commit()
    first_session.close()
    waiting.join(30)
    assert won["claim"] is not None and won["claim"].earlier_claims == 1
