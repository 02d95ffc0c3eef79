"""What a running task is handed: its parameters, its backbone, and ways to report metrics, progress and
artifacts, all written to the job database as the job goes."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from tlq.db import queries
from tlq.plugins.artifacts import ArtifactStore
from tlq.plugins.base import BackboneRef, Environment, LoadedBackbone
from tlq.plugins.errors import BadInput, JobCancelled, JobTimedOut

ProgressCallback = Callable[[float | None, float | None, str | None, dict[str, float]], None]


class JobLost(Exception):
    """This attempt no longer owns the job (it was recovered elsewhere); stop without recording an outcome."""


class JobContext:
    """The running job as its task sees it.

    Args:
        job_id: The job's id.
        backbone: The backbone the job asked for, or None for tasks that take none.
        env: Settings and database.
        worker: The name this attempt claimed the job under.
        device: ``cpu`` or ``cuda``, as chosen for this attempt.
        attempt: 1 for the first run, 2 after one recovery, ...
        timeout_s: Stop the job once this many seconds have passed, if set.
        on_progress: Called on every progress report (`tlq run` draws its bar from it).
        check_interval: How often, at most, ``check`` asks the database whether the job was cancelled.
    """

    def __init__(
        self,
        job_id: int,
        backbone: BackboneRef | None,
        env: Environment,
        worker: str,
        device: str = "cpu",
        attempt: int = 1,
        timeout_s: float | None = None,
        on_progress: ProgressCallback | None = None,
        check_interval: float = 0.2,
        logger: logging.Logger | None = None,
        model_cache=None,
    ) -> None:
        self.job_id = job_id
        self.backbone = backbone
        self.env = env
        self.worker = worker
        self.device = device
        self.attempt = attempt
        self.timeout_s = timeout_s
        self.log = logger or logging.getLogger(f"tlq.job.{job_id}")
        self.artifacts = ArtifactStore(env.settings.artifacts_dir, job_id, self._record_artifact, self._forget_artifact)
        self._on_progress = on_progress
        self._check_interval = check_interval
        self._started = time.monotonic()
        self._last_poll = 0.0
        self._last_progress_write = 0.0
        self._cancel = threading.Event()
        self._lost = threading.Event()
        self._last_metrics: dict[str, float] = {}
        self._model_cache = model_cache
        self._first_batch_marked = False

    # --- the backbone ---------------------------------------------------------------------------------------

    def load_backbone(self, num_classes: int | None = 0) -> LoadedBackbone:
        """Builds the job's backbone; ``num_classes=0`` gives pooled features, None keeps a trained head."""
        if self.backbone is None:
            raise BadInput("this task needs a backbone; pass --backbone NAME")
        from tlq.plugins.backbones import provider_for

        provider = provider_for(self.backbone.name, self.env.backbones)
        if self._model_cache is None:
            return provider.load(self.backbone, self.env, num_classes)
        return self._model_cache.get(
            self.backbone, num_classes, lambda: provider.load(self.backbone, self.env, num_classes)
        )

    @property
    def feature_cache(self):
        """The on-disk feature cache of this host (``TLQ_HOME/cache``), or None when disabled."""
        from tlq.plugins.feature_cache import FeatureCache

        cache = FeatureCache.for_home(self.env.settings.home)
        return cache if cache.enabled else None

    def mark_first_batch(self) -> None:
        """Records, once, how long the job took from its start until its first batch reached the model."""
        if not self._first_batch_marked:
            self._first_batch_marked = True
            self.metric("seconds_to_first_batch", self.elapsed)

    # --- reporting ------------------------------------------------------------------------------------------

    def metric(self, name: str, value: float, step: int = 0, epoch: int | None = None) -> None:
        self.metrics({name: value}, step=step, epoch=epoch)

    def metrics(self, values: dict[str, float], step: int = 0, epoch: int | None = None) -> None:
        """Records several metrics at one step in one transaction; a repeated (name, step) replaces the old value."""
        self._ensure_ours()
        with self.env.db.session() as session:
            for name, value in values.items():
                queries.record_metric(session, self.job_id, name, float(value), step=step, epoch=epoch)
        self._last_metrics.update({k: float(v) for k, v in values.items()})

    def progress(self, current: float | None, total: float | None = None, stage: str | None = None) -> None:
        """Reports progress (written at most twice a second) and stops the job here if it was cancelled."""
        now = time.monotonic()
        if self._on_progress is not None:
            self._on_progress(current, total, stage, dict(self._last_metrics))
        if now - self._last_progress_write >= 0.5 or (total is not None and current is not None and current >= total):
            self._last_progress_write = now
            with self.env.db.session() as session:
                queries.update_progress(session, self.job_id, self.worker, current, total, stage)
        self.check()

    def check(self) -> None:
        """Raises JobCancelled, JobTimedOut or JobLost when the job must stop; cheap enough to call every step."""
        now = time.monotonic()
        if now - self._last_poll >= self._check_interval:
            self._last_poll = now
            self.heartbeat()
        if self._lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")
        if self._cancel.is_set():
            raise JobCancelled(f"job {self.job_id} was cancelled")
        if self.timeout_s is not None and now - self._started > self.timeout_s:
            raise JobTimedOut(f"job {self.job_id} ran past its timeout of {self.timeout_s:g} s")

    def heartbeat(self) -> None:
        """Tells the database this attempt is alive and learns whether a cancel was asked for."""
        with self.env.db.session() as session:
            ours, cancel = queries.heartbeat(session, self.job_id, self.worker)
        if not ours:
            self._lost.set()
        if cancel:
            self._cancel.set()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _ensure_ours(self) -> None:
        if self._lost.is_set():
            raise JobLost(f"job {self.job_id} was taken over by another worker")

    def _record_artifact(self, kind: str, path: str, size: int, sha256: str) -> None:
        self._ensure_ours()
        with self.env.db.session() as session:
            queries.record_artifact(session, self.job_id, kind, path, size, sha256)

    def _forget_artifact(self, path: str) -> None:
        with self.env.db.session() as session:
            queries.delete_artifact(session, self.job_id, path)

    def summary(self) -> dict[str, Any]:
        return {"job": self.job_id, "metrics": dict(self._last_metrics)}
