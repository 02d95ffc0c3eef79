"""The Python client: what the CLI does, as plain functions returning plain objects (ints, dicts, lists).

    from tlq import client

    job = client.submit("finetune", backbone="resnet18", data="./pets", epochs=3)
    client.wait(job)["metrics"]["val_acc"]
    sweep = client.sweep("finetune", {"backbone": ["resnet18", "vgg16"], "lr": [1e-3, 1e-4]}, data="./pets")
    client.compare(group=sweep["group"])[0]          # the best run
    client.results(where="val_acc > 0.9 and backbone = 'vgg16'", order_by="-val_acc")

    with client.track("my-loop", backbone="resnet18", params={"lr": 1e-3}) as run:   # your own script as a job
        run.log(step=1, val_acc=0.91)

Each function takes the same settings as the CLI (``home``, ``database_url``, ``broker_url``, ``artifacts_dir``,
else the TLQ_* environment variables). A ``Client`` holds them for several calls.

The modules: ``api`` (``Client``), ``functions`` (the plain functions), ``sweeps`` (checking a grid),
``copying`` (copying artifacts out), ``workers_view`` (the workers as `tlq workers` shows them), ``tracking``
(``track``: a run of your own script as a job), ``mlflow_export`` (`tlq export mlflow`).
"""

from __future__ import annotations

from typing import Any

from tlq.client.api import FINAL, SPEC_FIELDS, Client
from tlq.client.functions import (
    artifacts,
    compare,
    get,
    list_jobs,
    metrics,
    results,
    submit,
    sweep,
    wait,
)
from tlq.client.tracking import TrackedRun, track
from tlq.errors import BadInput

# `list` is left out so that `from tlq.client import *` never hides the builtin.
__all__ = [
    "FINAL",
    "SPEC_FIELDS",
    "BadInput",
    "Client",
    "TrackedRun",
    "artifacts",
    "compare",
    "get",
    "list_jobs",
    "metrics",
    "results",
    "submit",
    "sweep",
    "track",
    "wait",
]


def __getattr__(name: str) -> Any:
    """``client.list`` (the README's name for ``list_jobs``, bound here without shadowing the builtin) and the
    constants read from the database layer only when asked for (``PRIMARY_METRICS``)."""
    if name == "list":
        return list_jobs
    if name == "PRIMARY_METRICS":
        from tlq.db.results import PRIMARY_METRICS

        return PRIMARY_METRICS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
