"""The Python client: what the CLI does, as plain functions returning plain objects (ints, dicts, lists).

    from tlq import client

    job = client.submit("finetune", backbone="resnet18", data="./pets", epochs=3)
    client.wait(job)["metrics"]["val_acc"]
    sweep = client.sweep("finetune", {"backbone": ["resnet18", "vgg16"], "lr": [1e-3, 1e-4]}, data="./pets")
    client.compare(group=sweep["group"])[0]          # the best run
    client.results(where="val_acc > 0.9 and backbone = 'vgg16'", order_by="-val_acc")

Each function takes the same settings as the CLI (``home``, ``database_url``, ``broker_url``, ``artifacts_dir``,
else the TLQ_* environment variables). A ``Client`` holds them for several calls.
"""

from __future__ import annotations

import builtins
import hashlib
import itertools
import os
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from tlq.config import Settings
from tlq.errors import BadInput

SPEC_FIELDS = ("backbone", "weights", "pretrained", "device", "priority", "name", "max_attempts", "timeout", "tags")
FINAL = ("succeeded", "failed", "cancelled")


class Client:
    """A connection to one tlq setup: its job database, broker and artifacts directory.

    Args:
        settings: Settings to use; else they are read from the other arguments and the TLQ_* variables.
    """

    def __init__(
        self,
        home: str | Path | None = None,
        database_url: str | None = None,
        broker_url: str | None = None,
        artifacts_dir: str | Path | None = None,
        settings: Settings | None = None,
        env=None,
    ) -> None:
        if env is not None:
            settings = env.settings
        self.settings = settings or Settings.load(home, database_url, broker_url, artifacts_dir)
        if env is not None:
            self.__dict__["env"] = env

    @cached_property
    def env(self):
        from tlq.env import Environment

        return Environment(self.settings)

    # --- submitting -------------------------------------------------------------------------------------------

    def spec(self, task: str, **options: Any):
        """A validated-shape JobSpec: ``options`` are the spec fields (backbone, device, tags, ...) and the
        task's parameters, mixed as on the command line."""
        from pydantic import ValidationError

        from tlq.jobs.spec import JobSpec, describe_validation_error

        common = {k: v for k, v in options.items() if k in SPEC_FIELDS and v is not None}
        params = {k: v for k, v in options.items() if k not in SPEC_FIELDS and v is not None}
        try:
            return JobSpec(task=task, params=params, **common)
        except ValidationError as exc:
            raise BadInput(describe_validation_error(exc)) from exc

    def submit(self, task: str, **options: Any) -> int:
        """Queues a job and returns its id.

        Args:
            task: A task name (`tlq tasks` lists them).
            **options: ``backbone``, ``weights``, ``pretrained``, ``device``, ``priority``, ``name``,
                ``max_attempts``, ``timeout``, ``tags`` (a dict) and the task's parameters.

        Raises:
            BadInput: The job cannot work; nothing was queued. The message names the fix.
        """
        return self.queue(self.spec(task, **options))

    def queue(self, spec) -> int:
        """Queues a JobSpec (as the CLI builds it); returns the job id."""
        from tlq.jobs.submit import submit

        return submit(self.env, spec)

    def sweep(
        self, task: str, grid: dict[str, Iterable[Any]], name: str | None = None, max_jobs: int = 100, **fixed: Any
    ) -> dict[str, Any]:
        """Queues the cross product of ``grid`` (option -> values) as one group.

        Args:
            grid: The swept options, such as ``{"backbone": ["vgg16", "resnet50"], "lr": [1e-3, 1e-4]}``.
            name: A name for the group (and its jobs).
            max_jobs: Refuse sweeps larger than this.
            **fixed: Options every run shares, as for ``submit``.

        Returns:
            ``{"group": group id, "jobs": [job ids]}``.
        """
        from tlq.jobs.submit import submit_group

        axes = {key: [*values] for key, values in grid.items()}
        for key, values in axes.items():
            if not values:
                raise BadInput(f"--{key.replace('_', '-')} has no values to sweep; give one or more, comma-separated")
        count = 1
        for values in axes.values():
            count *= len(values)
        if count > max_jobs:
            raise BadInput(
                f"this sweep makes {count} jobs, more than --max-jobs {max_jobs}; "
                "sweep fewer values or raise --max-jobs"
            )
        overlap = set(axes) & set(fixed)
        if overlap:
            raise BadInput(f"{', '.join(sorted(overlap))} is both swept and fixed; give it once")
        specs = [
            self.spec(task, **fixed, **dict(zip(axes, combo, strict=True)), name=name)
            for combo in itertools.product(*axes.values())
        ]
        group_spec = {
            "task": task,
            "axes": {k: [_jsonable(v) for v in values] for k, values in axes.items()},
            "fixed": {k: _jsonable(v) for k, v in fixed.items() if v is not None},
        }
        group, jobs = submit_group(self.env, specs, name or f"{task} sweep", group_spec)
        return {"group": group, "jobs": jobs}

    def run(self, task: str, on_progress: Callable | None = None, **options: Any) -> dict[str, Any]:
        """Runs a job in this process, with no worker or broker, and returns it as ``get`` does."""
        return self.get(self.run_spec(self.spec(task, **options), on_progress))

    def run_spec(self, spec, on_progress: Callable | None = None) -> int:
        """Runs a JobSpec in this process; returns the job id."""
        from tlq.jobs.submit import run_here

        return run_here(self.env, spec, on_progress=on_progress)

    def retry(self, job_id: int) -> int:
        """Queues a new job with the same spec as ``job_id``; returns the new id."""
        from tlq.jobs.submit import spec_of_job

        with self.env.db.read_session() as session:
            spec = spec_of_job(self._job(session, job_id))
        return self.queue(spec)

    def cancel(self, job_id: int) -> str:
        """Cancels a job: ``cancelled`` (it was queued), ``requested`` (it stops at its next step), or the
        final status it already had."""
        from tlq.db import claims

        with self.env.db.session() as session:
            self._job(session, job_id)
            return claims.request_cancel(session, job_id)

    # --- reading ----------------------------------------------------------------------------------------------

    def _job(self, session, job_id: int):
        from tlq.db import queries

        job = queries.get_job(session, job_id)
        if job is None:
            raise BadInput(f"there is no job {job_id}; `tlq jobs` lists the jobs")
        return job

    def get(self, job_id: int) -> dict[str, Any]:
        """A job as `tlq show --json` prints it: status, params, latest metrics, artifacts, times."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            return queries.job_as_dict(session, self._job(session, job_id), self.settings.artifacts_dir)

    def list(
        self,
        status: str | None = None,
        task: str | None = None,
        backbone: str | None = None,
        tags: dict[str, str] | None = None,
        group: int | None = None,
        limit: int | None = 50,
    ) -> builtins.list[dict[str, Any]]:
        """Jobs, newest first, as ``get`` returns them."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            rows = queries.list_jobs(
                session, status=status, task=task, backbone=backbone, tags=tags, group=group, limit=limit
            )
            return [queries.job_as_dict(session, job, self.settings.artifacts_dir) for job in rows]

    def results(
        self,
        where: str | None = None,
        order_by: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int | None = 100,
    ) -> builtins.list[dict[str, Any]]:
        """Jobs matching a filter on final metrics, parameters, task, status, tags and dates, as ``get`` returns
        them. See `tlq results --help` for the filter language.

        Raises:
            FilterError: The filter is malformed; the message points at the spot.
        """
        return self.search(where, order_by, tags, limit)[0]

    def search(self, where=None, order_by=None, tags=None, limit: int | None = 100):
        """``results``, and the metric names the filter and the order used (for showing them)."""
        from tlq.db import queries, results

        with self.env.db.read_session() as session:
            rows, used = results.search_jobs(session, where, order_by, tags, limit)
            return [queries.job_as_dict(session, job, self.settings.artifacts_dir) for job in rows], used

    def wait(
        self,
        job_id: int,
        timeout: float | None = None,
        poll: float = 0.5,
        on_update: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Waits until a job ends and returns it as ``get`` does.

        Args:
            timeout: Give up after this many seconds and raise TimeoutError.
            on_update: Called with the job at each poll (for progress bars).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job["status"] in FINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:g} s")
            time.sleep(poll)

    def metrics(self, job_id: int, name: str | None = None) -> builtins.list[dict[str, Any]]:
        """The full history of a job's metrics: ``{"name", "step", "epoch", "value", "time"}`` by name and step."""
        from tlq.db import results

        with self.env.db.read_session() as session:
            self._job(session, job_id)
            rows = results.metric_history(session, [job_id], name)
            if name and not rows:
                known = sorted({m.name for m in results.metric_history(session, [job_id])})
                raise BadInput(f"job {job_id} has no metric {name!r}; it has {', '.join(known) or 'none yet'}")
            return [
                {"name": m.name, "step": m.step, "epoch": m.epoch, "value": m.value, "time": m.time.isoformat()}
                for m in rows
            ]

    def default_metric(self, job_ids: Iterable[int]) -> str | None:
        """The metric to rank or plot the jobs by when none is named: val_acc, else the first of the tasks' main
        metrics (accuracy, success_rate, target_prob, ...) that the jobs recorded."""
        from tlq.db import results

        with self.env.db.read_session() as session:
            return results.pick_metric(session, [*job_ids])

    def statuses(self, job_ids: Iterable[int]) -> dict[int, str]:
        """The status of each of the jobs, in one query (for following many jobs at once)."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            return queries.job_statuses(session, [*job_ids])

    def jobs_of(self, group: int | None = None, jobs: Iterable[int] = ()) -> builtins.list[int]:
        """The job ids of a group, or the given ids checked to exist."""
        from tlq.db import results

        with self.env.db.read_session() as session:
            if group is not None:
                if results.get_group(session, group) is None:
                    raise BadInput(f"there is no group {group}; `tlq sweep` prints the group of the jobs it queues")
                return [job.id for job in results.group_jobs(session, group)]
            return [self._job(session, job_id).id for job_id in jobs]

    def compare(
        self,
        group: int | None = None,
        jobs: Iterable[int] = (),
        metric: str | None = None,
        goal: str | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """A leaderboard of a group's jobs (or the given jobs), best first.

        Args:
            metric: Rank by this metric (default: val_acc, else the jobs' main metric).
            goal: ``max`` or ``min`` (default: min for losses, errors and times, else max).

        Returns:
            Rows with the keys job, backbone, params (the parameters that differ between the jobs), best, final,
            epochs, seconds, status, rank and best_run.
        """
        from tlq.db import results

        ids = self.jobs_of(group, jobs)
        if not ids:
            raise BadInput("nothing to compare: give a group id or two or more job ids")
        metric = metric or self.default_metric(ids)
        with self.env.db.read_session() as session:
            rows = [self._job(session, job_id) for job_id in ids]
            if metric is None:
                raise BadInput("these jobs have no metric to rank by yet; name one with --metric")
            recorded = results.metric_names_of(session, ids)
            if metric not in recorded:
                have = ", ".join(sorted(recorded)) or "none yet"
                raise BadInput(f"none of these jobs has the metric {metric!r}; they have {have}")
            return [row.as_dict() for row in results.leaderboard(session, rows, metric, goal)]

    # --- artifacts --------------------------------------------------------------------------------------------

    def artifacts(self, job_id: int, kind: str | None = None) -> builtins.list[dict[str, Any]]:
        """A job's artifacts: ``{"kind", "path" (absolute), "relative", "bytes", "sha256"}``."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            self._job(session, job_id)
            rows = queries.list_artifacts(session, job_id, kind)
            if kind and not rows:
                kinds = sorted({a.kind for a in queries.list_artifacts(session, job_id)})
                raise BadInput(f"job {job_id} has no {kind!r} artifact; its kinds are {', '.join(kinds) or 'none'}")
        root = self.settings.artifacts_dir
        return [
            {"kind": a.kind, "path": str(root / a.path), "relative": a.path, "bytes": a.bytes, "sha256": a.sha256}
            for a in rows
        ]

    def copy_artifacts(self, job_id: int, dest: str | Path, kind: str | None = None) -> builtins.list[Path]:
        """Copies a job's artifacts into ``dest`` (sub-folders kept) and checks each copy's sha256.

        All or nothing: each file and folder is created new, never through a symlink and never over something
        that exists; if anything fails (a digest, a link in the way, a full disk, Ctrl-C), what this copy created
        is removed again, so ``dest`` is left as it was. Links in the path to ``dest`` itself are followed: the
        caller chose that path.

        Raises:
            BadInput: A file is missing, lies outside the artifacts directory, does not match its digest, or its
                copy would go over a file or through a symbolic link.
        """
        root = self.settings.artifacts_dir.resolve()
        dest = Path(os.path.abspath(Path(dest).expanduser()))
        job_root = root / str(job_id)  # where the job's ArtifactStore writes
        if Path(os.path.realpath(dest)).is_relative_to(job_root):
            raise BadInput(f"--copy-to {dest} lies inside job {job_id}'s own artifacts; copy them somewhere else")
        plan: dict[Path, tuple[Path, dict[str, Any]]] = {}
        for artifact in self.artifacts(job_id, kind):
            source = (root / artifact["relative"]).resolve()
            if not source.is_relative_to(root):
                raise BadInput(f"artifact {artifact['relative']} lies outside the artifacts directory; not copied")
            if not source.is_file():
                raise BadInput(f"artifact {source} is missing; it was deleted after job {job_id} wrote it")
            inside = source.relative_to(job_root) if source.is_relative_to(job_root) else Path(source.name)
            if inside in plan:
                raise BadInput(
                    f"two artifacts of job {job_id} would both be copied to {dest / inside}; nothing was copied"
                )
            plan[inside] = (source, artifact)
        for inside in plan:  # the same checks _NewFiles makes as it goes, here to fail before writing anything
            _check_free(dest, inside)
        with _NewFiles(dest) as new:
            for inside, (source, artifact) in plan.items():
                digest = new.copy(source, inside)
                if digest != artifact["sha256"]:
                    raise BadInput(
                        f"{source} no longer matches the digest recorded when job {job_id} wrote it; nothing was copied"
                    )
        return [dest / inside for inside in plan]


def _check_free(dest: Path, inside: Path) -> None:
    """Refuses a copy to ``dest / inside`` that would go through a symbolic link or over an existing file."""
    path = dest
    for part in inside.parts:
        path = path / part
        if os.path.islink(path):
            raise BadInput(f"{path} is a symbolic link; tlq never copies through one (nothing was copied)")
    if os.path.lexists(path):
        raise BadInput(f"{path} already exists; copy into an empty folder (nothing was copied)")


class _NewFiles:
    """Creates folders and files under one destination without following a symbolic link there or replacing
    anything, and removes all it created when the ``with`` block fails.

    Every step goes through an open descriptor of the folder above (``dir_fd``) with ``O_NOFOLLOW``, and files
    are created with ``O_EXCL``, so a link planted after the checks (even a dangling one) makes the copy fail
    instead of writing where it points.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folders: dict[tuple[str, ...], int] = {}  # parts below ``base`` -> open descriptor
        self.created: builtins.list[tuple[int, str, bool]] = []  # (folder descriptor, name, is a folder)

    def __enter__(self) -> _NewFiles:
        self.base = self.dest
        while not os.path.lexists(self.base) and self.base != self.base.parent:
            self.base = self.base.parent
        try:
            self.folders[()] = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            what = "a symbolic link to nothing" if os.path.islink(self.base) else f"not a folder ({exc.strerror})"
            raise BadInput(f"--copy-to: {self.base} is {what}; name a folder") from exc
        return self

    def __exit__(self, failed, *exc) -> None:
        if failed is not None:
            for folder, name, is_folder in reversed(self.created):
                try:
                    os.rmdir(name, dir_fd=folder) if is_folder else os.unlink(name, dir_fd=folder)
                except OSError:
                    pass  # a folder someone else filled meanwhile stays
        for descriptor in self.folders.values():
            os.close(descriptor)

    def copy(self, source: Path, inside: Path) -> str:
        """Copies ``source`` to ``dest / inside``, a file it creates; returns the sha256 of the bytes written."""
        parts = self.dest.relative_to(self.base).parts + inside.parts
        target = self.base.joinpath(*parts)
        folder = self._folder(parts[:-1])
        digest = hashlib.sha256()
        try:
            out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
        except FileExistsError as exc:
            raise BadInput(f"{target} already exists; copy into an empty folder (nothing was copied)") from exc
        except OSError as exc:
            raise BadInput(f"cannot create {target} ({exc.strerror}); nothing was copied") from exc
        self.created.append((folder, parts[-1], False))
        try:
            with open(out, "wb") as written, source.open("rb") as read:
                for block in iter(lambda: read.read(1 << 20), b""):
                    digest.update(block)
                    written.write(block)
        except OSError as exc:
            raise BadInput(f"cannot copy {source} to {target} ({exc.strerror}); nothing was copied") from exc
        return digest.hexdigest()

    def _folder(self, parts: tuple[str, ...]) -> int:
        """An open descriptor of the folder ``base / parts``, made where missing; never through a link."""
        if parts in self.folders:
            return self.folders[parts]
        above = self._folder(parts[:-1])
        path = self.base.joinpath(*parts)
        try:
            os.mkdir(parts[-1], dir_fd=above)
            self.created.append((above, parts[-1], True))
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInput(f"cannot create the folder {path} ({exc.strerror}); nothing was copied") from exc
        try:
            self.folders[parts] = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=above)
        except OSError as exc:
            what = "a symbolic link" if os.path.islink(path) else "not a folder"
            raise BadInput(f"{path} is {what}; tlq never copies through one (nothing was copied)") from exc
        return self.folders[parts]


def _jsonable(value: Any) -> Any:
    # `list` in this module is the client operation; the type is builtins.list.
    return value if isinstance(value, str | int | float | bool | None | dict | builtins.list) else str(value)


# --- module-level functions: one Client per call, from the TLQ_* environment or the keyword settings -----------

_SETTINGS_KEYS = ("home", "database_url", "broker_url", "artifacts_dir")

# `list` is left out so that `from tlq.client import *` never hides the builtin.
__all__ = ["Client", "artifacts", "compare", "get", "metrics", "results", "submit", "sweep", "wait"]


def _client(kwargs: dict[str, Any], strict: bool = False) -> Client:
    """A Client from the settings keywords, which are taken out of ``kwargs``; with ``strict``, any other
    keyword is an error (a typo such as ``hom=`` must not fall back to the default setup)."""
    client = Client(**{k: kwargs.pop(k) for k in _SETTINGS_KEYS if k in kwargs})
    if strict and kwargs:
        raise TypeError(f"unexpected keyword {', '.join(sorted(kwargs))}; settings are {', '.join(_SETTINGS_KEYS)}")
    return client


def submit(task: str, **options: Any) -> int:
    """Queues a job; see ``Client.submit``."""
    return _client(options).submit(task, **options)


def sweep(task: str, grid: dict[str, Iterable[Any]], **options: Any) -> dict[str, Any]:
    """Queues a sweep as one group; see ``Client.sweep``."""
    return _client(options).sweep(task, grid, **options)


def get(job_id: int, **settings: Any) -> dict[str, Any]:
    """A job as `tlq show --json` prints it; see ``Client.get``."""
    return _client(settings, strict=True).get(job_id)


def list(**options: Any) -> builtins.list[dict[str, Any]]:  # noqa: A001 - the operation's name
    """Jobs, newest first; see ``Client.list``."""
    return _client(options).list(**options)


def results(where: str | None = None, order_by: str | None = None, **options: Any) -> builtins.list[dict[str, Any]]:
    """Jobs matching a filter; see ``Client.results``."""
    return _client(options).results(where, order_by, **options)


def wait(
    job_id: int,
    timeout: float | None = None,
    poll: float = 0.5,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Waits for a job to end; see ``Client.wait``."""
    return _client(settings, strict=True).wait(job_id, timeout, poll, on_update)


def metrics(job_id: int, name: str | None = None, **settings: Any) -> builtins.list[dict[str, Any]]:
    """A job's metric history; see ``Client.metrics``."""
    return _client(settings, strict=True).metrics(job_id, name)


def compare(group: int | None = None, jobs: Iterable[int] = (), **options: Any) -> builtins.list[dict[str, Any]]:
    """A leaderboard, best first; see ``Client.compare``."""
    return _client(options).compare(group, jobs, **options)


def artifacts(job_id: int, kind: str | None = None, **settings: Any) -> builtins.list[dict[str, Any]]:
    """A job's artifacts; see ``Client.artifacts``."""
    return _client(settings, strict=True).artifacts(job_id, kind)
