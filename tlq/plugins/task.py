"""What a task is: a parameter model (validated before anything is queued), a run function, and a ``TaskPlugin``
object that an entry point in the ``tlq.tasks`` group names. A task is one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from tlq.env import Environment
    from tlq.plugins.backbone import BackboneRef
    from tlq.plugins.context import JobContext


class TaskParams(BaseModel):
    """Base of every task's parameter model: unknown keys are errors, and values are re-checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class TaskPlugin:
    """A task tlq can run.

    Attributes:
        name: The name users type (``tlq submit NAME``).
        summary: One line for `tlq tasks`.
        params: The pydantic model of the task's options; each field becomes a ``--flag``.
        run: ``run(ctx, params)`` does the work in a worker (or in `tlq run`).
        needs_backbone: Whether ``--backbone`` is required.
        check: Optional submit-time check beyond field validation, ``check(params, env, backbone)`` with the
            job's BackboneRef (or None); raises BadInput.
        memory: Optional estimate of the job's memory, ``memory(params, env, backbone)`` returning a
            ``tlq.ml.memory.MemoryNeed`` (or None when it cannot tell); a job that cannot fit the
            workers of its queue is refused at submit.
    """

    name: str
    summary: str
    params: type[TaskParams]
    run: Callable[[JobContext, Any], None]
    needs_backbone: bool = True
    check: Callable[[Any, Environment, BackboneRef | None], None] | None = None
    memory: Callable[[Any, Environment, BackboneRef | None], Any] | None = None
