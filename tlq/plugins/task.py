"""What a task is: a parameter model (validated before anything is queued), a run function, and a ``TaskPlugin``
object that an entry point in the ``tlq.tasks`` group names. A task is one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from tlq.env import Environment
    from tlq.plugins.backbone import BackboneRef
    from tlq.plugins.context import JobContext


# Names a task's parameters cannot take: the submit options every task shares (and the CLI's own flags). A
# parameter of one of these names would be shadowed by the shared option and silently dropped, so a task that
# declares one is refused when it is loaded.
RESERVED_PARAMS = frozenset(
    {
        "task", "backbone", "weights", "pretrained", "device", "priority", "name", "max_attempts", "timeout",
        "tags", "tag", "params", "parent_id", "group_id", "wait", "json", "json_out", "max_jobs", "metric",
    }
)  # fmt: skip


def check_task(entry_name: str, plugin: object) -> None:
    """Refuses a task whose entry point loads something that is not a ``TaskPlugin``, whose ``name`` differs
    from its entry point's name, or whose parameters take a reserved name (``RESERVED_PARAMS``).

    Raises:
        ValueError: What is wrong and how the task's author fixes it.
    """
    if not isinstance(plugin, TaskPlugin):
        raise ValueError(f"its entry point loads a {type(plugin).__name__}, not a tlq.plugins.TaskPlugin")
    if plugin.name != entry_name:
        raise ValueError(
            f"its entry point is named {entry_name!r} but its TaskPlugin is named {plugin.name!r}; "
            "give both the same name"
        )
    clashes = sorted(RESERVED_PARAMS & set(plugin.params.model_fields))
    if clashes:
        raise ValueError(f"its parameters {', '.join(clashes)} take names of options every task shares; rename them")


class TaskParams(BaseModel):
    """Base of every task's parameter model: unknown keys are errors, and values are re-checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def run_processes(self) -> int:
        """How many processes one run takes (on a GPU worker, a GPU each): submit routes a job of several to the
        workers that own as many GPUs. One, unless a task runs distributed (finetune's ``--ddp``)."""
        return 1


P = TypeVar("P", bound=TaskParams)


@dataclass(frozen=True)
class TaskPlugin(Generic[P]):
    """A task tlq can run, typed by its parameter model: ``TaskPlugin(params=FinetuneParams, run=run, ...)`` is a
    ``TaskPlugin[FinetuneParams]``, and a type checker holds ``run``, ``check`` and ``memory`` to taking a
    ``FinetuneParams`` (what the worker validates the job's parameters into before it calls them).

    Attributes:
        name: The name users type (``tlq submit NAME``).
        summary: One line for `tlq tasks`.
        params: The pydantic model of the task's options; each field becomes a ``--flag``.
        run: ``run(ctx, params)`` does the work in a worker (or in `tlq run`).
        needs_backbone: Whether ``--backbone`` is required.
        many_backbones: Whether ``--backbone`` takes a comma-separated list (``job:12,resnet18``) to compare, each
            checked at submit; the task reads them from ``ctx.backbones`` and loads each with
            ``ctx.load_backbone(ref=...)``. Other tasks refuse a list (`tlq sweep` runs one job per backbone).
        check: Optional submit-time check beyond field validation, ``check(params, env, backbone)`` with the
            job's BackboneRef (or None); raises BadInput.
        headline: The metric that says how well a job of this task did (``val_acc``); `tlq compare` and
            sweeps rank by it when no ``--metric`` is named.
        headline_goal: ``max`` when a higher headline is better, ``min`` when lower is.
        memory: Optional estimate of the job's memory, ``memory(params, env, backbone)`` returning a
            ``tlq.ml.memory.MemoryNeed`` (or None when it cannot tell); a job that cannot fit the
            workers of its queue is refused at submit.
    """

    name: str
    summary: str
    params: type[P]
    run: Callable[[JobContext, P], None]
    needs_backbone: bool = True
    many_backbones: bool = False
    check: Callable[[P, Environment, BackboneRef | None], None] | None = None
    memory: Callable[[P, Environment, BackboneRef | None], Any] | None = None
    headline: str | None = None
    headline_goal: Literal["max", "min"] = "max"
