"""Typed SQLAlchemy 2.0 models for jobs, their metrics and artifacts, groups and workers.

The same schema runs on SQLite and PostgreSQL; the README documents it for plain-SQL queries.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)

    def process_result_value(self, value: dt.datetime | None, dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class JobStatus(enum.StrEnum):
    """Where a job is in its life; succeeded, failed and cancelled are final."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @classmethod
    def final(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED.value, cls.FAILED.value, cls.CANCELLED.value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, dt.datetime: UTCDateTime}


class DatabaseInstance(Base):
    """The one row naming this database: a random id made with the schema (checkpoints record it)."""

    __tablename__ = "tlq_instance"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[dt.datetime]


class JobGroup(Base):
    """A set of jobs submitted together, such as a sweep."""

    __tablename__ = "job_groups"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str | None] = mapped_column(String(255))
    spec: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One unit of work: a task run on a backbone with validated parameters."""

    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    task: Mapped[str] = mapped_column(String(64), index=True)
    backbone: Mapped[str | None] = mapped_column(String(255), index=True)
    weights: Mapped[str | None] = mapped_column(Text)
    pretrained: Mapped[bool] = mapped_column(Boolean, default=True)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[str] = mapped_column(String(16), index=True, default=JobStatus.QUEUED.value)
    queue: Mapped[str] = mapped_column(String(32), default="cpu")
    device: Mapped[str] = mapped_column(String(16), default="auto")
    ran_on: Mapped[str | None] = mapped_column(String(128))
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    timeout_s: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(255))
    error: Mapped[str | None] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(255))
    tags: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    cancel_requested_at: Mapped[dt.datetime | None]
    progress_current: Mapped[float | None] = mapped_column(Float)
    progress_total: Mapped[float | None] = mapped_column(Float)
    progress_stage: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None]
    finished_at: Mapped[dt.datetime | None]
    heartbeat_at: Mapped[dt.datetime | None]
    # When the job id was last confirmed sent to the broker (set only once the publish returned).
    dispatched_at: Mapped[dt.datetime | None]
    # A process that means to send the job holds it from this time on; the hold expires, so a sender that died
    # before confirming leaves the job to be sent again.
    sending_since: Mapped[dt.datetime | None]
    # The current claim: a fresh random token per attempt. Every write of a running job is conditional on it.
    lease: Mapped[str | None] = mapped_column(String(32))
    claimed_at: Mapped[dt.datetime | None]
    # The last time the task itself moved (a step, a metric, a progress report), not only its heartbeat thread.
    progress_at: Mapped[dt.datetime | None]
    process_id: Mapped[int | None] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("job_groups.id", ondelete="SET NULL"), index=True)


class Metric(Base):
    """One value of one named metric of a job, at a step (and epoch, where training has epochs)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "name", "step"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    step: Mapped[int] = mapped_column(Integer, default=0)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float] = mapped_column(Float)
    time: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Artifact(Base):
    """A file a job wrote, stored under the artifacts directory; ``path`` is relative to that directory."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Attempt(Base):
    """One claim of a job: who ran it, under which lease, and how that run ended."""

    __tablename__ = "job_attempts"
    __table_args__ = (UniqueConstraint("lease"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    number: Mapped[int] = mapped_column(Integer)
    lease: Mapped[str] = mapped_column(String(32))
    worker: Mapped[str] = mapped_column(String(255))
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    claimed_at: Mapped[dt.datetime]
    ended_at: Mapped[dt.datetime | None]
    outcome: Mapped[str | None] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)


class WorkerRecord(Base):
    """A worker process as it registered itself, refreshed while it lives."""

    __tablename__ = "workers"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(255))
    device: Mapped[str] = mapped_column(String(128))
    concurrency: Mapped[int] = mapped_column(Integer, default=1)
    # Memory each of its jobs may use (GPU memory on a GPU worker, else its machine's memory / concurrency).
    memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    # The GPUs it owns (`tlq worker --gpus`: one pool process each) or, without --gpus, those it sees (JSON list of
    # index, uuid, name, memory_bytes).
    gpus: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="online")
    # A random token per worker life: a worker whose name another one took over stops reporting under it.
    instance: Mapped[str | None] = mapped_column(String(32))
    # Unused: a worker's current jobs are the running jobs that name it. Kept because workers of the release
    # before still write it at every claim, and they share a database with newer ones during an upgrade.
    current_job_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[dt.datetime] = mapped_column(default=utcnow)
