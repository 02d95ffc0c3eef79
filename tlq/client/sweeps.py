"""Sweeps: checking a grid of option values before any job is queued, and the group's record of it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tlq.errors import BadInput


def check_grid(grid: dict[str, Iterable[Any]], fixed: dict[str, Any], max_jobs: int) -> dict[str, list[Any]]:
    """The grid's axes as lists; BadInput for an axis with no values, too many jobs, or an option both swept and
    fixed."""
    axes = {key: [*values] for key, values in grid.items()}
    for key, values in axes.items():
        if not values:
            raise BadInput(f"--{key.replace('_', '-')} has no values to sweep; give one or more, comma-separated")
    count = 1
    for values in axes.values():
        count *= len(values)
    if count > max_jobs:
        raise BadInput(
            f"this sweep makes {count} jobs, more than --max-jobs {max_jobs}; sweep fewer values or raise --max-jobs"
        )
    overlap = set(axes) & set(fixed)
    if overlap:
        raise BadInput(f"{', '.join(sorted(overlap))} is both swept and fixed; give it once")
    return axes


def describe_group(task: str, axes: dict[str, list[Any]], fixed: dict[str, Any]) -> dict[str, Any]:
    """The group's spec as stored with it: the task, the swept axes and the fixed options, as JSON values."""
    return {
        "task": task,
        "axes": {k: [_jsonable(v) for v in values] for k, values in axes.items()},
        "fixed": {k: _jsonable(v) for k, v in fixed.items() if v is not None},
    }


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, str | int | float | bool | None | dict | list) else str(value)
