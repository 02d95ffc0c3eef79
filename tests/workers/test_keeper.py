"""The lease keeper against a real PostgreSQL that goes away and comes back (through a proxy the test cuts)."""

import threading
import time

import pytest
from sqlalchemy import select

from tests.support import ToggleProxy
from tlq.db import Database, JobStatus, Metric, claims, queries
from tlq.workers.keeper import LeaseKeeper, Timing

FAST = dict(beat_every=0.2, poll_every=0.05, max_backoff=0.2)


@pytest.fixture
def proxied(pg_url):
    """(database through a proxy the test can cut, the same database reached directly, the proxy)."""
    proxy = ToggleProxy(5432).up()
    through = Database(pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}"))
    direct = Database(pg_url)
    direct.ensure_schema()
    through.ensure_schema()
    yield through, direct, proxy
    proxy.down()
    through.engine.dispose()
    direct.engine.dispose()


def running_job(db) -> tuple[int, str]:
    with db.session() as session:
        job_id = queries.create_job(session, task="sleep", params={}).id
    with db.session() as session:
        return job_id, claims.claim(session, job_id, "w", "h", 1)


def metric_writer(job_id, step):
    return lambda session: queries.record_metric(session, job_id, "loss", float(step), step=step)


def steps(db, job_id) -> list[tuple[int, float]]:
    with db.read_session() as session:
        rows = session.scalars(select(Metric).where(Metric.job_id == job_id).order_by(Metric.step)).all()
        return [(m.step, m.value) for m in rows]


def wait_until(condition, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_writes_queued_during_an_outage_land_once_and_in_order(proxied):
    through, direct, proxy = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(through, job_id, lease, Timing(outage_s=60, **FAST))
    keeper.start()
    keeper.write(metric_writer(job_id, 1))
    wait_until(lambda: steps(direct, job_id) == [(1, 1.0)])
    proxy.down()
    for step in (2, 3):
        keeper.write(metric_writer(job_id, step))
    # A resumed attempt drops what came after its checkpoint, then records step 2 anew: order matters.
    keeper.write(lambda session: queries.delete_metrics_after(session, job_id, 1))
    keeper.write(lambda session: queries.record_metric(session, job_id, "loss", 20.0, step=2))
    time.sleep(1.5)
    assert steps(direct, job_id) == [(1, 1.0)] and not keeper.lost.is_set()
    proxy.up()
    wait_until(lambda: steps(direct, job_id) == [(2 - 1, 1.0), (2, 20.0)])
    assert keeper.close(JobStatus.SUCCEEDED) is True
    with direct.read_session() as session:
        job = queries.get_job(session, job_id)
        assert (job.status, job.attempts) == ("succeeded", 1)


def test_the_final_write_waits_out_an_outage(proxied):
    through, direct, proxy = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(through, job_id, lease, Timing(outage_s=60, **FAST))
    keeper.start()
    keeper.write(metric_writer(job_id, 1))
    proxy.down()
    result = {}
    closing = threading.Thread(target=lambda: result.update(recorded=keeper.close(JobStatus.SUCCEEDED)))
    closing.start()
    time.sleep(1.5)
    assert closing.is_alive()  # still retrying
    proxy.up()
    closing.join(30)
    assert result == {"recorded": True}
    assert steps(direct, job_id) == [(1, 1.0)]
    with direct.read_session() as session:
        assert queries.get_job(session, job_id).status == "succeeded"


def test_an_outage_past_the_window_gives_the_attempt_up(proxied):
    through, direct, proxy = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(through, job_id, lease, Timing(outage_s=1.0, **FAST))
    keeper.start()
    proxy.down()
    wait_until(keeper.lost.is_set)
    assert "database was unreachable" in keeper.lost_reason and "TLQ_DB_OUTAGE_S=1" in keeper.lost_reason
    proxy.up()
    assert keeper.close(JobStatus.SUCCEEDED) is False  # it gave up: no outcome is recorded
    with direct.read_session() as session:
        assert queries.get_job(session, job_id).status == "running"  # left for recovery, like a dead worker's


def test_a_taken_lease_stops_every_write(proxied):
    _, direct, _ = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(direct, job_id, lease, Timing(outage_s=60, **FAST))
    keeper.write(metric_writer(job_id, 1))
    keeper.cycle()
    with direct.session() as session:  # recovered, and claimed again by a sibling with the same worker name
        assert claims.recover(session, job_id, lease, "frozen") == "requeued"
    with direct.session() as session:
        other = claims.claim(session, job_id, "w", "h", 2)
    keeper.write(metric_writer(job_id, 2))
    keeper.set_progress(5, 10, "stale")
    keeper.cycle()
    assert keeper.lost.is_set() and "taken over" in keeper.lost_reason
    assert keeper.close(JobStatus.SUCCEEDED) is False
    assert steps(direct, job_id) == [(1, 1.0)]
    with direct.read_session() as session:
        job = queries.get_job(session, job_id)
        assert (job.status, job.lease, job.progress_stage) == ("running", other, "requeued: frozen on attempt 1")


def test_a_cancel_reaches_the_task_through_the_keeper(proxied):
    _, direct, _ = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(direct, job_id, lease, Timing(**FAST))
    keeper.cycle()
    assert not keeper.cancelled.is_set()
    with direct.session() as session:
        assert claims.request_cancel(session, job_id) == "requested"
    keeper.cycle()
    assert keeper.cancelled.is_set()


def test_flush_returns_once_what_was_queued_is_written_and_never_hangs_on_a_lost_lease(proxied):
    through, direct, proxy = proxied
    job_id, lease = running_job(direct)
    # A long poll: without flush the writes would wait for the next cycle (or the final status).
    keeper = LeaseKeeper(through, job_id, lease, Timing(outage_s=60, beat_every=30, poll_every=30, max_backoff=0.2))
    keeper.start()
    for step in (1, 2):
        keeper.write(metric_writer(job_id, step))
    assert keeper.flush() is True  # written, by a transaction that held the lease after flush was called
    assert steps(direct, job_id) == [(1, 1.0), (2, 2.0)]  # in the database when flush returns
    assert keeper.flush() is False  # nothing queued: nothing asked the database, the caller must
    proxy.down()
    keeper.write(metric_writer(job_id, 3))
    flushed = threading.Thread(target=keeper.flush)
    flushed.start()
    flushed.join(1.0)
    assert flushed.is_alive()  # an outage: flush waits for the write, as the file it guards must
    proxy.up()
    flushed.join(10)
    assert not flushed.is_alive() and steps(direct, job_id)[-1] == (3, 3.0)
    with direct.session() as session:  # the job is taken over: the next write can never be made
        claims.recover(session, job_id, lease, "taken over in a test")
    keeper.write(metric_writer(job_id, 4))
    assert keeper.flush() is False  # returns: the attempt is lost
    assert keeper.lost.is_set() and steps(direct, job_id)[-1] == (3, 3.0)
    assert keeper.close(JobStatus.SUCCEEDED) is False


def test_a_flush_inside_a_write_and_a_flush_during_an_outage_neither_hang_nor_hammer(proxied):
    through, direct, proxy = proxied
    job_id, lease = running_job(direct)
    keeper = LeaseKeeper(through, job_id, lease, Timing(outage_s=3, beat_every=0.2, poll_every=0.05, max_backoff=1.0))
    cycles = []
    cycle = keeper.cycle
    keeper.cycle = lambda: (cycles.append(time.monotonic()), cycle())[1]
    keeper.start()
    keeper.write(lambda session: keeper.flush())  # a write that flushes: the keeper must not wait for itself
    keeper.write(metric_writer(job_id, 1))
    wait_until(lambda: steps(direct, job_id) == [(1, 1.0)])
    proxy.down()
    keeper.write(metric_writer(job_id, 2))
    start = time.monotonic()
    keeper.flush()  # waits out the outage window, then gives up
    took, during = time.monotonic() - start, len([c for c in cycles if c >= start])
    assert keeper.lost.is_set() and 2.5 < took < 10
    # the keeper's own backoff (0.25, 0.5, 1, 1 s ...): a handful of tries, not 20 a second
    assert during <= 10, f"{during} tries in {took:.1f} s"
    proxy.up()
    assert keeper.close(None) is False


@pytest.mark.parametrize("replay_fails", [False, True])
def test_a_final_write_whose_reply_was_lost_is_not_written_again(tmp_path, replay_fails):
    """The first commit of close() lands but its reply is lost: the retry finds the status recorded and returns,
    without running the attempt's last writes a second time (a second run that failed used to spin forever)."""
    import contextlib

    from sqlalchemy.exc import IntegrityError, OperationalError

    db = Database(f"sqlite:///{tmp_path / 'tlq.sqlite'}")
    job_id, lease = running_job(db)
    session, commits, calls = db.session, [], []

    @contextlib.contextmanager
    def reply_lost_once():
        with session() as s:
            yield s
        commits.append(1)
        if len(commits) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection unexpectedly"))

    def write(s):
        calls.append(1)
        if replay_fails and len(calls) > 1:
            raise IntegrityError("INSERT", {}, Exception("a second run of this write"))
        queries.record_metric(s, job_id, "loss", 1.0, step=1)

    db.session = reply_lost_once
    keeper = LeaseKeeper(db, job_id, lease, Timing(poll_every=0.01, max_backoff=0.01, outage_s=5))
    keeper.start()
    keeper.write(write)
    outcome = {}
    closing = threading.Thread(target=lambda: outcome.setdefault("closed", keeper.close(JobStatus.SUCCEEDED)))
    closing.start()
    closing.join(10)
    assert not closing.is_alive() and outcome["closed"] is True
    assert len(calls) == 1 and steps(db, job_id) == [(1, 1.0)]
    with db.read_session() as s:
        assert queries.get_job(s, job_id).status == "succeeded"
