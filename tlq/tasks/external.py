"""external: a run of the user's own script, recorded by ``tlq.client.track`` while the script runs.

Its job row, metrics and artifacts are tlq's like any other job's, so `tlq jobs`, `results`, `compare`, `plot`
and the dashboard show it; but the work was the script's, so no worker can run (or retry) such a job: its
parameters are the script's own, recorded as given, and validating them for a submit refuses with the fix.
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from tlq.plugins.context import JobContext
from tlq.plugins.task import TaskParams, TaskPlugin

REFUSAL = (
    "its jobs are runs of your own scripts, recorded from the script and never submitted: wrap the script's loop "
    'in `with tlq.client.track("NAME") as run:` and call run.log(step=..., val_acc=...) in it'
)


class ExternalParams(TaskParams):
    """No options: a tracked run's parameters are what the script passed to ``track(params=...)``."""

    @model_validator(mode="before")
    @classmethod
    def _never_submitted(cls, values: Any) -> Any:
        # Before any field check, so `tlq submit external`, a sweep, a retry and a worker all get the same fix.
        raise ValueError(REFUSAL)


def run(ctx: JobContext, params: ExternalParams) -> None:
    raise ValueError(REFUSAL)  # unreachable: the parameters never validate


task: TaskPlugin[ExternalParams] = TaskPlugin(
    name="external",
    summary="A run of your own script, recorded by tlq.client.track (never submitted).",
    params=ExternalParams,
    run=run,
    needs_backbone=False,
)
