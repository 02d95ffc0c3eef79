"""Pure logic of the worker's monitor, with injected time: when a checker trusts its own view, worker names."""

import os
import re

from tlq.db.scans import HeldJob
from tlq.workers.app import default_worker_name
from tlq.workers.recovery import CANCEL_GRACE_S, DatabaseHealth, is_child, overdue_reason, process_alive


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_checker_trusts_silence_only_after_a_whole_window_of_database_access():
    clock = FakeClock()
    health = DatabaseHealth(clock=clock)
    assert health.trusted_for() == 0.0  # nothing heard yet
    clock.now = 10.0
    with health.timed():
        clock.now += 0.5  # a report: the window starts when it ended
    clock.now += 4.5
    assert health.trusted_for() == 4.5
    try:
        with health.timed():
            clock.now += 30.0  # waited for a lock, then gave up
            raise OSError("database is locked")
    except OSError:
        pass
    clock.now += 5.0  # the lock may still be held: a failure proves nothing about after it
    assert health.trusted_for() == 0.0
    with health.timed():
        clock.now += 12.0  # this one waited 12 s for the lock, then got it: the lock was free for all from then
    clock.now += 6.0
    assert health.trusted_for() == 6.0
    with health.timed():
        clock.now += 3.0  # a slow call on a loaded machine is no outage: the window goes on
    assert health.trusted_for() == 9.0


def test_default_worker_names_are_unique_within_one_process():
    names = {default_worker_name() for _ in range(50)}
    assert len(names) > 40  # 4 hex digits of randomness: a clash is possible, but rare
    assert all(re.fullmatch(rf".+-{os.getpid()}-[0-9a-f]{{4}}", name) for name in names)


def test_only_own_children_are_ended_and_dead_processes_are_known():
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert is_child(child.pid) and process_alive(child.pid)
        assert not is_child(os.getpid())  # a solo pool's job runs in the main process: never killed
        assert not is_child(1)
    finally:
        child.kill()
        child.wait()
    assert not process_alive(child.pid)


def held(**seconds) -> HeldJob:
    values = dict(
        seconds_running=10.0, seconds_since_progress=1.0, seconds_since_heartbeat=1.0, seconds_since_cancel=None
    )
    values.update(seconds)
    timeout = values.pop("timeout_s", None)
    return HeldJob(1, "lease", "w", 123, timeout, **values)


def test_what_the_deadline_scan_ends_and_what_it_leaves_alone():
    def reason(job, check_stall=True):
        return overdue_reason(job, stall_after_s=60.0, beat_every=5.0, check_stall=check_stall)

    assert reason(held()) is None
    assert reason(held(timeout_s=9.0)) is None  # within the 2 s the task's own check gets
    assert "ran past its timeout of 5 s" in reason(held(timeout_s=5.0))
    assert "made no progress for 61 s" in reason(held(seconds_since_progress=61.0))
    # A stall is judged only while the heartbeat still beats and the scan trusts its view of the database: a
    # frozen or cut-off attempt is the stale scan's to recover, and progress made during an outage may not
    # be written yet.
    assert reason(held(seconds_since_progress=61.0, seconds_since_heartbeat=20.0)) is None
    assert reason(held(seconds_since_progress=61.0), check_stall=False) is None
    assert reason(held(seconds_since_cancel=CANCEL_GRACE_S - 1)) is None  # it may still stop by itself
    assert "did not stop within 10 s of its cancel" in reason(held(seconds_since_cancel=CANCEL_GRACE_S + 1))


def test_each_deadline_is_passed_only_once_it_is_exceeded():
    from tlq.workers.recovery import TIMEOUT_GRACE_S

    def reason(job):
        return overdue_reason(job, stall_after_s=60.0, beat_every=5.0, check_stall=True)

    assert reason(held(seconds_since_cancel=CANCEL_GRACE_S)) is None
    assert reason(held(timeout_s=5.0, seconds_running=5.0 + TIMEOUT_GRACE_S)) is None
    assert reason(held(seconds_since_progress=60.0)) is None
    # the heartbeat counts as beating for under three intervals: at 15 s it is the stale scan's job
    assert reason(held(seconds_since_progress=61.0, seconds_since_heartbeat=14.9)) is not None
    assert reason(held(seconds_since_progress=61.0, seconds_since_heartbeat=15.0)) is None
    assert reason(held(seconds_since_progress=61.0, seconds_since_heartbeat=17.5)) is None
    # a cancel that was not obeyed wins over a timeout, and a timeout over a stall: the reason names the first
    both = held(timeout_s=1.0, seconds_since_cancel=CANCEL_GRACE_S + 1, seconds_since_progress=61.0)
    assert "cancel" in reason(both)
    assert "timeout" in reason(held(timeout_s=1.0, seconds_since_progress=61.0))
    assert reason(held(timeout_s=2.5, seconds_running=10.0)).endswith(
        "ran past its timeout of 2.5 s, stuck inside one step; the worker ended its process (raise --timeout if it "
        "needs longer)"
    )
    assert reason(held(seconds_since_progress=61.0)) == (
        "made no progress for 61 s (TLQ_STALL_AFTER=60) while its heartbeat still beat; the worker ended it"
    )


def test_a_checker_that_was_frozen_trusts_nothing_it_saw_before():
    clock = FakeClock()
    health = DatabaseHealth(clock=clock)
    with health.timed():
        pass
    clock.now = 100.0
    assert health.trusted_for() == 100.0
    health.distrust()
    assert health.trusted_for() == 0.0
    with health.timed():
        clock.now += 1.0
    clock.now += 2.0
    assert health.trusted_for() == 2.0
