"""Your own script as a tlq job: ``tlq.client.track``.

    from tlq.client import track

    with track("digits-loop", backbone="resnet18", params={"lr": 1e-3}) as run:
        for step in range(100):
            ...
            run.log(step=step, train_loss=loss)
        run.log(val_acc=accuracy)
        run.artifact("confusion.png")

The run is a job of the task ``external`` (``tlq.tasks.external``). Its row is written queued on the ``local``
queue and claimed by this process under a lease, as `tlq run` claims the job it runs
(``tlq.workers.execute.claim_with_retry``); a lease keeper thread (``tlq.workers.keeper.LeaseKeeper``) writes what
the block logs, in order and only while the lease holds, and beats the heartbeat. So the run ends as a job does:
succeeded when the block ends, failed with the error when it raises (the exception goes on), cancelled at the
next ``run.log`` after `tlq cancel`, and, when the script dies without a word (SIGKILL, a lost machine), failed
by a live worker's recovery once its heartbeat is older than ``TLQ_STALE_AFTER``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tlq.client.api import Client
from tlq.config import mask_secrets_in
from tlq.errors import BadInput, JobCancelled

if TYPE_CHECKING:
    from tlq.plugins.context import JobContext
    from tlq.workers.keeper import LeaseKeeper

log = logging.getLogger("tlq.track")

EXTERNAL = "external"
INTERRUPTED = "interrupted while it ran (Ctrl-C or the process was told to exit)"


class TrackedRun:
    """The run a ``with track(...) as run:`` block records.

    Attributes:
        id: Its job id (`tlq show ID`).
    """

    def __init__(self, job_id: int, context: JobContext) -> None:
        self.id = job_id
        self._ctx = context
        self._next_step = 0
        self._ended = False  # set as the block ends: nothing can be recorded for the run after that

    def log(self, step: int | None = None, **metrics: float) -> None:
        """Records metrics at ``step``: by default the step after the last one logged (0 at first). A metric
        logged again at the same step replaces the value. Never waits on the database.

        Raises:
            ValueError: A name is empty or longer than 64 characters, or a value is not a finite number.
            JobCancelled: `tlq cancel` asked the run to stop; the block ends and the run is recorded cancelled.
            BadInput: The ``with`` block has ended.
        """
        self._check_open("run.log")
        if not metrics:
            raise BadInput("run.log() needs at least one metric, as in run.log(step=3, val_acc=0.91)")
        step = self._next_step if step is None else int(step)
        self._ctx.metrics({name: _number(name, value) for name, value in metrics.items()}, step=step)
        self._next_step = max(self._next_step, step + 1)

    def artifact(self, path: str | Path, kind: str | None = None) -> Path:
        """Copies a file, or a folder with everything in it, into the run's artifact folder, where each file's
        size and sha256 are recorded (a name kept again replaces the earlier copy).

        Args:
            path: The file or folder; its copy keeps its name.
            kind: What `tlq artifacts --kind` finds the files by (default: each file's suffix, such as ``png``).

        Returns:
            The path of the copy.
        """
        self._check_open("run.artifact")
        source = Path(path).expanduser()
        if source.is_file():
            files = [source]
        elif source.is_dir():
            files = sorted(p for p in source.rglob("*") if p.is_file())
        elif source.exists():
            raise BadInput(f"run.artifact: {source} is not a regular file or folder; pass the path of one to keep")
        else:
            raise BadInput(f"run.artifact: {source} does not exist; pass the path of a file or folder to keep")
        for file in files:
            name = file.relative_to(source.parent).as_posix()
            with self._ctx.artifacts.target(kind or file.suffix.lstrip(".").lower() or "file", name) as tmp:
                shutil.copyfile(file, tmp)
        return self._ctx.artifacts.path(source.name)

    def _check_open(self, call: str) -> None:
        if self._ended:
            raise BadInput(
                f"{call}: the with block of run {self.id} has ended and its outcome is recorded; "
                "call it inside the block"
            )


@contextlib.contextmanager
def track(
    name: str,
    backbone: str | None = None,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    *,
    client: Client | None = None,
    **settings: Any,
) -> Iterator[TrackedRun]:
    """Records the ``with`` block as a tlq job of the task ``external``, running while the block runs.

    Args:
        name: The job's name.
        backbone: The model the script trains, as a label (``resnet50``); tlq does not load it.
        params: The script's hyperparameters (JSON values), shown and filtered on as ``params.NAME``.
        tags: Labels, filtered on as ``tags.NAME``; values are kept as text.
        client: The tlq setup to record in; else one from ``settings`` (``home``, ``database_url``,
            ``artifacts_dir``) and the TLQ_* environment variables, as `tlq` reads them.

    Yields:
        The TrackedRun: ``run.id``, ``run.log(step=None, **metrics)``, ``run.artifact(path, kind=None)``.
    """
    client = client or Client(**settings)
    keeper, ctx = _start(client, _spec(client, name, backbone, params, tags))
    run = TrackedRun(ctx.job_id, ctx)
    from tlq.db import JobStatus, claims

    try:
        yield run
    except JobCancelled:
        _end(keeper, run.id, JobStatus.CANCELLED, claims.CANCELLED_ON_REQUEST)
        raise
    except Exception as exc:
        _end(keeper, run.id, JobStatus.FAILED, f"{type(exc).__name__}: {exc}".strip())
        raise
    except SystemExit as exc:  # sys.exit() in the block: the script's own verdict
        if exc.code in (None, 0):
            _end(keeper, run.id, JobStatus.SUCCEEDED)
        else:
            _end(keeper, run.id, JobStatus.FAILED, f"the script exited with {exc.code}")
        raise
    except BaseException:  # Ctrl-C: as in `tlq run`, the run must not stay running
        _end(keeper, run.id, JobStatus.CANCELLED, INTERRUPTED)
        raise
    finally:
        run._ended = True
    _end(keeper, run.id, JobStatus.SUCCEEDED)


def _number(name: str, value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"run.log: metric {name!r} is {value!r:.80}, not a number; log numbers only") from None


def _json_value(value: Any) -> Any:
    """A numpy or torch scalar as its Python number; anything else JSON cannot hold, as its text."""
    return value.item() if hasattr(value, "item") else str(value)


def _spec(client: Client, name: str, backbone: str | None, params: dict | None, tags: dict | None):
    try:
        values = json.loads(json.dumps(params or {}, default=_json_value, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise BadInput(f"track(params=...) must hold JSON values (numbers, text, lists, dicts): {exc}") from exc
    if not isinstance(values, dict):
        raise BadInput("track(params=...) takes a dict of parameter names and values")
    text_tags = {str(key): str(value) for key, value in (tags or {}).items()}
    # One attempt: no worker can run the script again, so its recovery fails it (the `local` queue says so too).
    return client.make_spec(EXTERNAL, values, backbone=backbone, name=name, tags=text_tags, max_attempts=1)


def _start(client: Client, spec) -> tuple[LeaseKeeper, JobContext]:
    """Writes the run's job row and claims it for this process, as `tlq run` does; starts its lease keeper."""
    from tlq.jobs.submit import create_job_row
    from tlq.plugins.context import JobContext, JobOrigin
    from tlq.workers.app import default_worker_name
    from tlq.workers.execute import claim_with_retry, keeper_timing, params_digest
    from tlq.workers.keeper import LeaseKeeper

    env = client.env
    job_id = create_job_row(env, spec, "local", spec.params)
    worker = f"track-{default_worker_name()}"
    lease, job, _ = claim_with_retry(env, job_id, worker)
    if lease is None:  # cancelled between its row and its claim
        raise BadInput(f"the tracked run's job {job_id} could not start: it is {job}")
    keeper = LeaseKeeper(env.db, job_id, lease, keeper_timing(env))
    keeper.start()
    origin = JobOrigin(job_id, env.db.instance_id, params_digest(job), job.attempts)
    log.info("tracking run %s as job %s", spec.name, job_id)
    return keeper, JobContext(job_id, None, env, worker, keeper, attempt=job.attempts, origin=origin)


def _end(keeper: LeaseKeeper, job_id: int, status, error: str | None = None) -> None:
    """Records how the block ended, unless this process no longer holds the run (it was recovered meanwhile)."""
    if keeper.lost.is_set():
        keeper.close(None)
        log.warning("tracked run %s: %s; its outcome is not recorded", job_id, keeper.lost_reason)
        return
    if not keeper.close(status, error=error and mask_secrets_in(error)[:4000]):
        log.warning("tracked run %s ended (%s) but its outcome could not be recorded", job_id, status.value)
