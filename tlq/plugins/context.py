"""What a running task is handed: its parameters, its backbone, and ways to report metrics, progress and
artifacts, all written to the job database as the job goes."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.orm import Session

from tlq.db import queries
from tlq.errors import BadInput, JobCancelled, JobTimedOut
from tlq.plugins.artifacts import ArtifactStore
from tlq.plugins.backbone import BackboneRef, LoadedBackbone

if TYPE_CHECKING:
    from tlq.env import Environment

ProgressCallback = Callable[[float | None, float | None, str | None, dict[str, float]], None]


class JobLost(Exception):
    """This attempt no longer owns the job (it was recovered elsewhere, or the database stayed away too long);
    stop without recording an outcome."""


@dataclass(frozen=True)
class JobOrigin:
    """Who writes a job's files: a checkpoint records it, and a job resumes only from one of its own.

    Attributes:
        job: The job id.
        database: The id of the job database (``tlq_instance``): job ids repeat across databases, this does not.
        params: sha256 of the job's task, backbone, weights and parameters.
        attempt: The attempt that wrote it.
    """

    job: int
    database: str
    params: str
    attempt: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def wrote(self, recorded: dict[str, Any] | None) -> bool:
        """Whether ``recorded`` (a checkpoint's origin) is this job's own, by an earlier or this attempt."""
        if not isinstance(recorded, dict):
            return False
        same = all(recorded.get(k) == getattr(self, k) for k in ("job", "database", "params"))
        return same and isinstance(recorded.get("attempt"), int) and recorded["attempt"] <= self.attempt


class Lease(Protocol):
    """What the context needs from the worker side's lease keeper (``tlq.workers.keeper.LeaseKeeper``)."""

    lost: threading.Event
    cancelled: threading.Event
    lost_reason: str | None
    error: BaseException | None

    def write(self, write: Callable[[Session], None]) -> None: ...
    def flush(self) -> bool: ...
    def set_progress(self, current: float | None, total: float | None, stage: str | None) -> None: ...
    def moved(self) -> None: ...
    def verify(self) -> None: ...


class JobContext:
    """The running job as its task sees it.

    Reporting never waits on the database: metrics, progress and artifact records go, in order, to the
    attempt's lease keeper, which writes them while the attempt still holds the job.

    Args:
        job_id: The job's id.
        backbone: The backbone the job asked for, or None for tasks that take none.
        env: Settings and database.
        worker: The name this attempt claimed the job under.
        lease: The attempt's lease keeper.
        device: ``cpu`` or ``cuda``, as chosen for this attempt.
        attempt: 1 for the first run, 2 after one recovery, ...
        timeout_s: Stop the job once this many seconds have passed, if set.
        on_progress: Called on every progress report (`tlq run` draws its bar from it).
        started: When the attempt began (``time.monotonic()``), from which ``timeout_s`` counts.
        origin: The job, database, parameters and attempt this run writes as (checkpoints record it).
        gpus: In a `tlq worker --gpus` pool process, for a GPU job: the worker's GPUs as its jobs share them
            (``gpus.gather(n, job_id, waiting)`` holds n of them); None elsewhere.
    """

    def __init__(
        self,
        job_id: int,
        backbone: BackboneRef | None,
        env: Environment,
        worker: str,
        lease: Lease,
        device: str = "cpu",
        attempt: int = 1,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        logger: logging.Logger | None = None,
        model_cache=None,
        started: float | None = None,
        origin: JobOrigin | None = None,
        feature_cache=None,
        gpus=None,
    ) -> None:
        self.job_id = job_id
        self.gpus = gpus
        self.backbone = backbone
        self.env = env
        self.worker = worker
        self.device = device
        self.attempt = attempt
        self.timeout_s = timeout_s
        self.origin = origin or JobOrigin(job_id, "", "", attempt)
        self.log = logger or logging.getLogger(f"tlq.job.{job_id}")
        self._lease = lease
        self.artifacts = ArtifactStore(
            env.settings.artifacts_dir,
            job_id,
            self._record_artifact,
            self._forget_artifact,
            before_landing=self._before_landing,
        )
        self._on_progress = on_progress
        self._started = time.monotonic() if started is None else started
        self._last_metrics: dict[str, float] = {}
        self._model_cache = model_cache
        self._feature_cache = feature_cache
        self._first_batch_marked = False

    # --- the backbone ---------------------------------------------------------------------------------------

    @property
    def backbones(self) -> list[BackboneRef]:
        """The job's backbones, in the order named: one, or each of ``--backbone a,b,c`` for a task that compares
        several (``TaskPlugin.many_backbones``)."""
        return self.backbone.each() if self.backbone is not None else []

    def load_backbone(self, num_classes: int | None = 0, ref: BackboneRef | None = None) -> LoadedBackbone:
        """Builds the job's backbone, or ``ref`` (one of ``backbones``); ``num_classes=0`` gives pooled features,
        None keeps a trained head."""
        ref = ref or self.backbone
        if ref is None:
            raise BadInput("this task needs a backbone; pass --backbone NAME")
        from tlq.plugins.backbone import provider_for

        provider = provider_for(ref.name, self.env.backbones)
        if self._model_cache is None:
            return provider.load(ref, self.env, num_classes)
        return self._model_cache.get(ref, num_classes, lambda: provider.load(ref, self.env, num_classes))

    @property
    def feature_cache(self):
        """The on-disk feature cache of this host (``TLQ_HOME/cache``) the worker handed this job, or None when
        it is disabled."""
        cache = self._feature_cache
        return cache if cache is not None and cache.enabled else None

    def mark_first_batch(self) -> None:
        """Records, once, how long the job took from its start until its first batch reached the model."""
        if not self._first_batch_marked:
            self._first_batch_marked = True
            self.metric("seconds_to_first_batch", self.elapsed)

    # --- reporting ------------------------------------------------------------------------------------------

    def metric(self, name: str, value: float, step: int = 0, epoch: int | None = None) -> None:
        self.metrics({name: value}, step=step, epoch=epoch)

    def metrics(self, values: dict[str, float], step: int = 0, epoch: int | None = None) -> None:
        """Records several metrics at one step, together; a repeated (name, step) replaces the old value.

        Raises:
            ValueError: A name is empty or longer than 64 characters, or a value is not a finite number.
        """
        self.check()
        rows = [(name, float(value)) for name, value in values.items()]
        for name, value in rows:
            if not name or len(name) > 64:
                raise ValueError(f"metric name {name!r} must have 1 to 64 characters")
            if not math.isfinite(value):
                raise ValueError(f"metric {name!r} is {value} at step {step}; tlq records finite numbers only")
        job_id = self.job_id

        def write(session: Session) -> None:
            queries.record_metrics(session, job_id, dict(rows), step=step, epoch=epoch)

        self._lease.write(write)
        self._last_metrics.update(dict(rows))

    def forget_metrics_after(self, step: int) -> None:
        """Drops this job's metrics recorded past ``step`` (by an attempt whose later checkpoints were lost)."""
        job_id = self.job_id
        self._lease.write(lambda session: queries.delete_metrics_after(session, job_id, step))

    def progress(self, current: float | None, total: float | None = None, stage: str | None = None) -> None:
        """Reports progress and stops the job here if it was cancelled, taken over or timed out."""
        if self._on_progress is not None:
            self._on_progress(current, total, stage, dict(self._last_metrics))
        self._lease.set_progress(current, total, stage)
        self.check()

    def check(self) -> None:
        """Raises JobCancelled, JobTimedOut or JobLost when the job must stop; cheap enough to call every step
        (it reads flags the lease keeper sets; it never waits on the database)."""
        self._lease.moved()
        if self._lease.lost.is_set():
            raise JobLost(f"job {self.job_id}: {self._lease.lost_reason}")
        if self._lease.error is not None:
            raise RuntimeError(f"could not record the job's results: {self._lease.error}")
        if self._lease.cancelled.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.timeout_s is not None and self.elapsed > self.timeout_s:
            raise JobTimedOut(f"job {self.job_id} ran past its timeout of {self.timeout_s:g} s")

    def heartbeat(self) -> None:
        """Asks the database now whether this attempt still holds the job; raises JobLost if not."""
        self._lease.verify()
        self.check()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _before_landing(self) -> None:
        # What the task recorded before the file is written first (a checkpoint must not land ahead of its
        # epoch's metrics), and a file must not land for an attempt that lost its job: ask the database, not a
        # flag a frozen process may not have seen yet.
        if not self._lease.flush():  # a flush that held the lease in a new transaction has asked already
            self._lease.verify()
        self.check()

    def _record_artifact(self, kind: str, path: str, size: int, sha256: str) -> None:
        job_id = self.job_id
        self._lease.write(lambda session: queries.record_artifact(session, job_id, kind, path, size, sha256))

    def _forget_artifact(self, path: str) -> None:
        job_id = self.job_id
        self._lease.write(lambda session: queries.delete_artifact(session, job_id, path))

    def summary(self) -> dict[str, Any]:
        return {"job": self.job_id, "metrics": dict(self._last_metrics)}
