"""``Client``: one tlq setup (its job database, broker and artifacts directory) and every operation on it."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable
from functools import cached_property
from pathlib import Path
from typing import Any

from tlq.client.headlines import headline_metrics
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
        common = {k: v for k, v in options.items() if k in SPEC_FIELDS and v is not None}
        params = {k: v for k, v in options.items() if k not in SPEC_FIELDS and v is not None}
        return self.make_spec(task, params, **common)

    def make_spec(self, task: str, params: dict[str, Any], **common: Any):
        """A JobSpec from the task's parameters and the spec fields given apart (as the CLI parses them);
        a malformed field raises BadInput."""
        from pydantic import ValidationError

        from tlq.jobs.spec import JobSpec, describe_validation_error

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
        from tlq.client.sweeps import check_grid, describe_group
        from tlq.jobs.submit import submit_group

        axes = check_grid(grid, fixed, max_jobs)
        specs = [
            self.spec(task, **fixed, **dict(zip(axes, combo, strict=True)), name=name)
            for combo in itertools.product(*axes.values())
        ]
        group_spec = describe_group(task, axes, fixed)
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
        from tlq.jobs.spec import JobSpec

        with self.env.db.read_session() as session:
            spec = JobSpec.of_job(self._job(session, job_id))
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

    def list_jobs(
        self,
        status: str | None = None,
        task: str | None = None,
        backbone: str | None = None,
        tags: dict[str, str] | None = None,
        group: int | None = None,
        limit: int | None = 50,
        name: str | None = None,
    ) -> list[dict[str, Any]]:
        """Jobs, newest first, as ``get`` returns them; ``name`` keeps those whose name holds it, in any case."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            rows = queries.list_jobs(
                session, status=status, task=task, backbone=backbone, tags=tags, group=group, limit=limit, name=name
            )
            return [queries.job_as_dict(session, job, self.settings.artifacts_dir) for job in rows]

    def results(
        self,
        where: str | None = None,
        order_by: str | None = None,
        tags: dict[str, str] | None = None,
        limit: int | None = 100,
    ) -> list[dict[str, Any]]:
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

    def metrics(self, job_id: int, name: str | None = None) -> list[dict[str, Any]]:
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
        """The metric to rank or plot the jobs by when none is named: the headline metric their task declares
        (``TaskPlugin.headline``), else the first of val_acc, accuracy, success_rate, ... that they recorded."""
        from tlq.db import results

        headlines = headline_metrics(self.env.tasks)
        with self.env.db.read_session() as session:
            ids = [*job_ids]
            preferred = [headlines[task][0] for task in results.tasks_of(session, ids) if task in headlines]
            return results.pick_metric(session, ids, preferred)

    def statuses(self, job_ids: Iterable[int]) -> dict[int, str]:
        """The status of each of the jobs, in one query (for following many jobs at once)."""
        from tlq.db import queries

        with self.env.db.read_session() as session:
            return queries.job_statuses(session, [*job_ids])

    def jobs_of(self, group: int | None = None, jobs: Iterable[int] = ()) -> list[int]:
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
    ) -> list[dict[str, Any]]:
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
            goal = goal or ("min" if self.lower_is_better(metric) else "max")
            return [row.as_dict() for row in results.leaderboard(session, rows, metric, goal)]

    # --- artifacts --------------------------------------------------------------------------------------------

    def artifacts(self, job_id: int, kind: str | None = None) -> list[dict[str, Any]]:
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

    def copy_artifacts(self, job_id: int, dest: str | Path, kind: str | None = None) -> list[Path]:
        """Copies a job's artifacts into ``dest`` (sub-folders kept) and checks each copy's sha256.

        All or nothing: each file and folder is created new, never through a symlink and never over something
        that exists; if anything fails (a digest, a link in the way, a full disk, Ctrl-C), what this copy created
        is removed again, so ``dest`` is left as it was. Links in the path to ``dest`` itself are followed: the
        caller chose that path.

        Raises:
            BadInput: A file is missing, lies outside the artifacts directory, does not match its digest, or its
                copy would go over a file or through a symbolic link.
        """
        from tlq.client.copying import copy_checked

        return copy_checked(self.settings.artifacts_dir, job_id, self.artifacts(job_id, kind), dest)

    # --- queues and workers -----------------------------------------------------------------------------------

    def add_waiting(self, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Sets each job's ``waiting``: why a queued job has not started when no live worker takes its queue,
        else None. The live workers are read only when a job is queued."""
        from tlq.jobs.submit import live_queues, waiting_reason

        consumed = live_queues(self.env) if any(job["status"] == "queued" for job in jobs) else set()
        for job in jobs:
            job["waiting"] = waiting_reason(job["queue"], job["status"], consumed)
        return jobs

    def workers(self, show_all: bool = False) -> list[dict[str, Any]]:
        """The workers, by name, as `tlq workers --json` prints them; with ``show_all``, the offline ones too.
        A worker is live while it reported in within the live window, by the database's clock."""
        from tlq.client.workers_view import worker_rows

        return worker_rows(self.env, show_all)

    @staticmethod
    def machine_memory() -> int | None:
        """This machine's physical memory in bytes, when the platform says."""
        from tlq.jobs.submit import machine_memory

        return machine_memory()

    # --- groups and metrics -----------------------------------------------------------------------------------

    def is_group(self, group: int) -> bool:
        """Whether ``group`` is the id of a group (a sweep)."""
        from tlq.db import results

        with self.env.db.read_session() as session:
            return results.get_group(session, group) is not None

    @staticmethod
    def varying_params(params: list[dict[str, Any]]) -> list[str]:
        """The keys whose values differ between the parameter dicts, in first-seen order."""
        from tlq.db.results import varying_params_of

        return varying_params_of(params)

    def lower_is_better(self, metric: str) -> bool:
        """Whether smaller values of ``metric`` are better: as the task that records it as its headline says,
        else by its name (losses, errors, times)."""
        from tlq.db.results import lower_is_better

        goals = {goal for headline, goal in headline_metrics(self.env.tasks).values() if headline == metric}
        return goals == {"min"} if goals else lower_is_better(metric)

    # `list` stays the name users call (README); it is bound last, so nothing above reads it for the builtin.
    list = list_jobs
