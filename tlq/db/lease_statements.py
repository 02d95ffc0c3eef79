"""The statements a running job's attempt makes many times (claim, hold, finish), built once with bind parameters.

Building a statement per call (and its cache key) cost the worker more CPU than PostgreSQL took to run it; these
are built once per shape and executed with a dict of ``p_``-named parameters (SQLAlchemy keeps a column's own name
for its SET value). ``tlq.db.claims`` says what each means.
"""

from __future__ import annotations

import functools

from sqlalchemy import Integer, String, Text, bindparam, case, func, insert, select, update

from tlq.db.clock import db_now
from tlq.db.models import Attempt, Job, JobStatus, WorkerRecord

RUNNING = JobStatus.RUNNING.value
QUEUED = JobStatus.QUEUED.value
PROGRESS_COLUMNS = ("progress_current", "progress_total", "progress_stage")
JOBS, ATTEMPTS = Job.__table__, Attempt.__table__
_OTHER_ATTEMPT = ATTEMPTS.alias("other_attempt")  # made once: a new alias per claim cost 0.3 ms to build


@functools.cache
def claim_statement(devices: tuple[str, ...]):
    """The claim's UPDATE, built once per set of devices the worker labels: its parameters are ``p_job_id``,
    ``p_worker``, ``p_lease``, ``p_pid`` and ``p_ran_on_<i>`` (the label of ``devices[i]``; SQLAlchemy keeps a
    column's own name for its SET value). Building it per claim cost more CPU than the database took to run it."""
    worker, lease = bindparam("p_worker", type_=String), bindparam("p_lease", type_=String)
    stopping = select(WorkerRecord.id).where(WorkerRecord.name == worker, WorkerRecord.status == "stopping").exists()
    values = dict(
        status=RUNNING,
        worker=worker,
        lease=lease,
        process_id=bindparam("p_pid", type_=Integer),
        attempts=Job.attempts + 1,
        started_at=func.coalesce(Job.started_at, db_now()),
        claimed_at=db_now(),
        heartbeat_at=db_now(),
        progress_at=db_now(),
        sending_since=None,
        error=None,
    )
    if devices:
        labels = (bindparam(f"p_ran_on_{i}", type_=String) for i in range(len(devices)))
        values["ran_on"] = case(
            *((Job.device == device, label) for device, label in zip(devices, labels, strict=True)), else_=Job.ran_on
        )
    return (
        update(JOBS)
        .where(Job.id == bindparam("p_job_id", type_=Integer), Job.status == QUEUED, Job.cancel_requested.is_(False))
        .where(~stopping)
        .values(**values)
        .returning(*JOBS.c)  # Core, not the ORM's bulk UPDATE: that cost a millisecond of CPU per claim
    )


def earlier_claims(job_id: int, lease: str):
    """How many attempt rows of the job another lease wrote (aliased: it also runs inside an INSERT into them)."""
    other = _OTHER_ATTEMPT.c
    return select(func.count()).select_from(_OTHER_ATTEMPT).where(other.job_id == job_id, other.lease != lease)


ATTEMPT_INSERT = (
    insert(ATTEMPTS)
    .values(
        job_id=bindparam("p_job_id", type_=Integer),
        number=bindparam("p_number", type_=Integer),
        lease=bindparam("p_lease", type_=String),
        worker=bindparam("p_worker", type_=String),
        hostname=bindparam("p_hostname", type_=String),
        pid=bindparam("p_pid", type_=Integer),
        claimed_at=db_now(),
    )
    .returning(
        earlier_claims(bindparam("p_job_id", type_=Integer), bindparam("p_lease", type_=String)).scalar_subquery()
    )
)


# ``claims._held`` with the job and lease as parameters (``p_job_id``, ``p_lease``), for the statements built once
HELD = (
    JOBS.c.id == bindparam("p_job_id", type_=Integer),
    JOBS.c.lease == bindparam("p_lease", type_=String),
    JOBS.c.status == RUNNING,
)


@functools.cache
def hold_statement(progressed: bool, with_progress: bool):
    """``hold_state``'s UPDATE, built once per shape (parameters ``p_job_id``, ``p_lease`` and ``p_<column>``
    for progress): the keeper runs it several times a second for every running job."""
    values = {"heartbeat_at": db_now()}
    if progressed:
        values["progress_at"] = db_now()
    if with_progress:
        values.update({column: bindparam(f"p_{column}", type_=JOBS.c[column].type) for column in PROGRESS_COLUMNS})
    return update(JOBS).where(*HELD).values(**values).returning(JOBS.c.cancel_requested)


@functools.cache
def finish_statement(with_progress: bool):
    """``finish_attempt``'s UPDATE, built once per shape (parameters ``p_job_id``, ``p_lease``, ``p_status``,
    ``p_error`` and ``p_<column>`` for progress)."""
    values = dict(
        status=bindparam("p_status", type_=String), error=bindparam("p_error", type_=Text), finished_at=db_now()
    )
    if with_progress:
        values.update({column: bindparam(f"p_{column}", type_=JOBS.c[column].type) for column in PROGRESS_COLUMNS})
    return update(JOBS).where(*HELD).values(**values)


END_ATTEMPT = (
    update(ATTEMPTS)
    .where(ATTEMPTS.c.lease == bindparam("p_lease", type_=String), ATTEMPTS.c.ended_at.is_(None))
    .values(ended_at=db_now(), outcome=bindparam("p_outcome", type_=String), reason=bindparam("p_reason", type_=Text))
)


def progress_params(progress: tuple | None) -> dict:
    """A progress report (current, total, stage) as the parameters of a statement built once (``p_<column>``);
    none without one."""
    return {} if progress is None else {f"p_{c}": v for c, v in zip(PROGRESS_COLUMNS, progress, strict=True)}
