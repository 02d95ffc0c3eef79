"""The lease keeper: the one thread that writes a running job's row for its attempt.

The task's own thread never waits on the database. Metrics, progress, artifact records and the like are queued
here, in order, and written in transactions that first re-assert the attempt's lease (``claims.hold``), so an
attempt whose job was recovered elsewhere writes nothing more. The keeper also beats the heartbeat, and
learns, several times a second, whether the job was cancelled or taken over.

A database that goes away (a PostgreSQL restart, a SQLite file another process holds locked) is retried with
backoff: nothing queued is lost or written twice (metrics are upserts by name and step), and the task goes
on. Only when the database stays unreachable for ``outage_s`` does the attempt give up; its job is then
recovered like a dead worker's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session

from tlq.db import Database, claims
from tlq.db.engine import DatabaseUnavailable
from tlq.db.models import JobStatus

log = logging.getLogger("tlq.worker")

Write = Callable[[Session], None]


def is_transient(exc: BaseException) -> bool:
    """Errors that a database coming back will cure: lost or refused connections, locks held too long."""
    if isinstance(exc, OperationalError | InterfaceError | DatabaseUnavailable):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


@dataclass
class Timing:
    """How often the keeper looks and beats, and how long it rides out a database outage."""

    beat_every: float = 5.0
    poll_every: float = 0.25
    outage_s: float = 120.0
    max_backoff: float = 5.0


class LeaseKeeper(threading.Thread):
    """Holds one attempt's lease while its task runs.

    Args:
        db: The job database.
        job_id: The running job.
        lease: The token of this attempt's claim.
        timing: Beat, poll and outage settings.
        clock: Monotonic seconds (injected by tests).
    """

    def __init__(
        self, db: Database, job_id: int, lease: str, timing: Timing | None = None, clock=time.monotonic
    ) -> None:
        super().__init__(name=f"tlq-lease-{job_id}", daemon=True)
        self.db = db
        self.job_id = job_id
        self.lease = lease
        self.timing = timing or Timing()
        self.clock = clock
        self.lost = threading.Event()
        self.cancelled = threading.Event()
        self.lost_reason: str | None = None
        self.error: BaseException | None = None  # a write the database refused for good (not an outage)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)  # queued writes left the queue, or the attempt ended
        self._pending: list[Write] = []
        self._queued = 0  # writes ever queued; those no longer pending were written or refused for good
        self._cycles = 0  # write cycles begun, and the number of the latest that held the lease and committed
        self._held_by_cycle = 0
        self._progress: tuple | None = None
        self._moves = 0  # task activity since the keeper last recorded it
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._last_ok = clock()
        self._last_beat = clock()
        self._failures = 0

    # --- what the task thread calls (never blocks on the database) --------------------------------------------

    def write(self, write: Write) -> None:
        """Queues ``write(session)``, to run after every write queued before it, while the lease holds.

        Writes wait for the next cycle (within ``poll_every``), so those of one moment share a transaction, and
        a short job's all go with its final status.
        """
        with self._lock:
            self._pending.append(write)
            self._queued += 1
            self._moves += 1

    def flush(self) -> bool:
        """Waits until every write queued before this call is written, or the attempt is over (``lost``).

        A file that lands after it (a checkpoint, say) never gets ahead of the metrics recorded before it: a
        process frozen, or killed, right after the file lands has already written them.

        Returns:
            True when a transaction begun after this call held the lease, so the database has just said that
            the attempt still holds its job; False when nothing proves it (nothing was queued, say).
        """
        if threading.current_thread() is self:  # a write that flushes: the keeper cannot wait for itself
            return False
        with self._changed:
            target, begun = self._queued, self._cycles
            # Writes leave the queue in order: the first ``target`` are done once fewer than that many remain.
            while self._queued - len(self._pending) < target and not self.lost.is_set() and self.is_alive():
                if not self._failures:  # during an outage the keeper keeps its own backoff
                    self._wake.set()
                self._changed.wait(0.05)
            return not self.lost.is_set() and self._held_by_cycle > begun

    def set_progress(self, current: float | None, total: float | None, stage: str | None) -> None:
        """Records the latest progress; only the newest is written."""
        with self._lock:
            self._progress = (current, total, stage)
            self._moves += 1

    def moved(self) -> None:
        """The task took a step: it is making progress, not only alive."""
        with self._lock:
            self._moves += 1

    def verify(self) -> None:
        """Asks the database now whether this attempt still holds the job (before a file lands, say).

        Rides out an outage like every other write, then gives up; ``lost`` tells the outcome.
        """
        start = self.clock()
        while not self.lost.is_set():
            try:
                with self.db.read_session() as session:
                    state = claims.lease_state(session, self.job_id, self.lease)
                self._ok()
                if not state.ours:
                    self._lose("the job was taken over by another worker")
                return
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if self._outage_exceeded(exc, since=start):
                    return
                time.sleep(self._backoff())

    # --- the thread ---------------------------------------------------------------------------------------------

    def run(self) -> None:
        last = self.clock()
        while not self._closing.is_set() and not self.lost.is_set():
            pause = self.timing.poll_every if not self._failures else self._backoff()
            self._wake.wait(pause)
            self._wake.clear()
            if self._closing.is_set():
                break
            if self.clock() - last > pause + 5.0:
                # The whole process was frozen (SIGSTOP, a suspended laptop): the task could not move either, so
                # its stall clock starts again rather than counting the freeze against it.
                self.moved()
            self.cycle()
            last = self.clock()

    def cycle(self) -> None:
        """Writes what is queued (or beats, when due), else looks at the row; one try, errors counted."""
        with self._lock:
            writes, progress, moves = list(self._pending), self._progress, self._moves
            self._cycles += 1
            number = self._cycles
        due = self.clock() - self._last_beat >= self.timing.beat_every
        try:
            if writes or progress is not None or due:
                with self.db.session() as session:
                    state = claims.hold_state(session, self.job_id, self.lease, moves > 0, progress)
                    if state is None:
                        self._lose("the job was taken over by another worker")
                        return
                    for write in writes:
                        write(session)
                with self._lock:
                    del self._pending[: len(writes)]
                    if self._progress is progress:
                        self._progress = None
                    self._moves -= moves
                    self._held_by_cycle = number
                    self._changed.notify_all()
                self._last_beat = self.clock()
            else:
                with self.db.read_session() as session:
                    state = claims.lease_state(session, self.job_id, self.lease)
                if not state.ours:
                    self._lose("the job was taken over by another worker")
                    return
            self._ok()
            if state.cancel_requested:
                self.cancelled.set()
        except Exception as exc:
            if not is_transient(exc):
                self._write_one_by_one(writes)
                return
            self._outage_exceeded(exc, since=self._last_ok)

    def _write_one_by_one(self, writes: list[Write]) -> None:
        """After the database refused a batch for good: writes each on its own, so only the bad one is lost,
        and keeps the first refusal for the task to fail with."""
        for write in writes:
            try:
                with self.db.session() as session:
                    if not claims.hold(session, self.job_id, self.lease):
                        self._lose("the job was taken over by another worker")
                        return
                    write(session)
            except Exception as exc:
                if is_transient(exc):
                    return  # an outage after all: the rest stays queued and is retried
                log.error("job %s: a write was refused: %s", self.job_id, _first_line(exc))
                self.error = self.error or exc
            with self._lock:
                self._pending.remove(write)
                self._changed.notify_all()

    def close(self, status: JobStatus | None, error: str | None = None) -> bool | None:
        """Stops the thread, writes what is still queued and, with ``status``, the job's final status.

        The final write is retried through an outage of up to ``outage_s``. A job whose results the database
        refused for good (see ``error``) is recorded failed, not succeeded.

        Returns:
            True when the final status was recorded, False when the lease was lost, None when the database
            stayed unreachable (the job will be recovered like a dead worker's).
        """
        self._closing.set()
        self._wake.set()
        if self.is_alive():
            self.join()
        if self.lost.is_set():
            return False
        start = self.clock()
        while True:
            with self._lock:
                writes, progress = list(self._pending), self._progress
            if status is JobStatus.SUCCEEDED and self.error is not None:
                status, error = JobStatus.FAILED, f"could not record the job's results: {_first_line(self.error)}"
            try:
                with self.db.session() as session:
                    # The final status first: it re-asserts the lease and locks the row like a hold (or finds
                    # that an earlier try was committed, its reply lost); the last writes then go with it.
                    if status is not None:
                        held = claims.finish_attempt(session, self.job_id, self.lease, status, error, progress)
                    else:
                        held = claims.hold_state(session, self.job_id, self.lease, True, progress) and "recorded"
                    if held is None:
                        self._lose("the job was taken over by another worker")
                        return False
                    if held == "recorded":  # "already": an earlier try committed these writes with the status
                        for write in writes:
                            write(session)
                with self._lock:
                    self._pending.clear()
                self._ok()
                return True
            except Exception as exc:
                if not is_transient(exc):
                    if not writes:
                        raise
                    self._write_one_by_one(writes)  # only the refused write is lost; the job then fails
                    if self.lost.is_set():  # the lease went while writing them one by one: nothing more to do
                        return False
                    continue
                if self._outage_exceeded(exc, since=start):
                    return None
                time.sleep(self._backoff())

    # --- internals ----------------------------------------------------------------------------------------------

    def _ok(self) -> None:
        if self._failures:
            log.warning(
                "job %s: the database is back after %.1f s; %d queued write(s) kept",
                self.job_id,
                self.clock() - self._last_ok,
                len(self._pending),
            )
        self._failures = 0
        self._last_ok = self.clock()

    def _backoff(self) -> float:
        return min(self.timing.max_backoff, 0.25 * 2 ** max(0, self._failures - 1))

    def _outage_exceeded(self, exc: BaseException, since: float) -> bool:
        self._failures += 1
        down = self.clock() - since
        if self._failures == 1 or self._failures % 10 == 0:
            log.warning(
                "job %s: the database is unreachable (%s); retrying for up to %.0f s",
                self.job_id,
                _first_line(exc),
                self.timing.outage_s,
            )
        if down < self.timing.outage_s:
            return False
        self._lose(
            f"the database was unreachable for {down:.0f} s (TLQ_DB_OUTAGE_S={self.timing.outage_s:g}); "
            "this attempt gives up and the job is recovered like a dead worker's"
        )
        return True

    def _lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.lost_reason = reason
            with self._lock:
                dropped = len(self._pending)
            log.warning("job %s: %s; this attempt stops (%d queued write(s) dropped)", self.job_id, reason, dropped)
            self.lost.set()
            with self._changed:
                self._changed.notify_all()  # wakes a flush waiting for writes that will never be made


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
