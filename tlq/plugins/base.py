"""What a task and a backbone provider are, and what they are handed.

A task is one file: a parameter model (validated in the CLI before anything is queued), a run function, and
a ``TaskPlugin`` object that an entry point in the ``tlq.tasks`` group names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from tlq.config import Settings

if TYPE_CHECKING:
    from tlq.db import Database
    from tlq.plugins.context import JobContext


class TaskParams(BaseModel):
    """Base of every task's parameter model: unknown keys are errors, and values are re-checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


@dataclass(frozen=True)
class Environment:
    """What plugins can reach at submit and at run time: the settings and the job database."""

    settings: Settings

    @cached_property
    def db(self) -> Database:
        from tlq.db import Database

        return Database(self.settings.database_url)

    @cached_property
    def tasks(self):
        """The installed tasks, read from their entry points once for this environment."""
        from tlq.plugins.registry import task_registry

        return task_registry()

    @cached_property
    def backbones(self):
        """The installed backbone providers, read from their entry points once for this environment."""
        from tlq.plugins.registry import backbone_providers

        return backbone_providers()


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
            ``tlq.plugins.memory.MemoryNeed`` (or None when it cannot tell); a job that cannot fit the
            workers of its queue is refused at submit.
    """

    name: str
    summary: str
    params: type[TaskParams]
    run: Callable[[JobContext, Any], None]
    needs_backbone: bool = True
    check: Callable[[Any, Environment, BackboneRef | None], None] | None = None
    memory: Callable[[Any, Environment, BackboneRef | None], Any] | None = None


@dataclass(frozen=True)
class BackboneRef:
    """The backbone a job asked for: a name (``resnet18``, ``job:12``), local weights, and whether to load the
    pretrained ones."""

    name: str
    weights: Path | None = None
    pretrained: bool = True


@dataclass
class LoadedBackbone:
    """A model ready for a task.

    Attributes:
        model: The torch module; with ``num_classes=0`` it returns pooled pre-logits features.
        data_config: timm's data config (input_size, interpolation, mean, std, crop_pct, crop_mode).
        arch: The timm architecture name.
        source: Where the weights came from, in words (recorded on the job and in model cards).
        class_names: Names of the classifier's outputs, when known.
        weights_file: The file the weights came from (None for random initialization); the feature cache
            keys on its digest.
    """

    model: Any
    data_config: dict[str, Any]
    arch: str
    source: str
    class_names: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    weights_file: Path | None = None


class BackboneProvider(Protocol):
    """Resolves backbone names of one scheme (``timm`` for plain names, ``job`` for ``job:ID``)."""

    scheme: str

    def list(self, pattern: str | None, env: Environment) -> list[dict[str, str]]:
        """Backbones this provider offers, as ``{"name", "source", "description"}`` rows."""

    def check(self, ref: BackboneRef, env: Environment) -> None:
        """Submit-time check; raises BadInput naming the fix."""

    def load(self, ref: BackboneRef, env: Environment, num_classes: int | None) -> LoadedBackbone:
        """Builds the model; ``num_classes=0`` gives a feature extractor, None keeps the trained head."""

    def class_names(self, ref: BackboneRef, env: Environment) -> list[str] | None:
        """Names of the classifier's outputs, found without building the model; None when unknown."""

    def architecture(self, ref: BackboneRef, env: Environment) -> tuple[str, int | None, int | None] | None:
        """(timm architecture, input size or None for its own, classifier outputs or None) without loading
        weights, for estimates; None when unknown."""
