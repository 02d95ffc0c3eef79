"""The job spec: what a user asks for, validated in full before anything is queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.plugins.backbone import LOCAL, BackboneRef, absolute, local_path, provider_for
from tlq.plugins.params import describe_validation_error
from tlq.plugins.registry import Registry
from tlq.plugins.task import TaskParams, TaskPlugin

Device = Literal["auto", "cpu", "cuda"]
BACKBONE_CHARS = 255  # the job row's backbone column


class JobSpec(BaseModel):
    """A job as submitted: the task, its backbone, its parameters and how to run it."""

    model_config = ConfigDict(extra="forbid")

    task: str
    backbone: str | None = None
    weights: Path | None = None
    pretrained: bool = True
    device: Device = "auto"
    priority: int = Field(0, ge=0, le=9)
    name: str | None = Field(None, max_length=255)
    max_attempts: int = Field(3, ge=1, le=20)
    timeout: float | None = Field(None, gt=0, le=30 * 24 * 3600)
    tags: dict[str, str] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)
    parent_id: int | None = None
    group_id: int | None = None

    @property
    def backbone_ref(self) -> BackboneRef | None:
        if self.backbone is None:
            return None
        return BackboneRef(self.backbone, self.weights, self.pretrained)

    # The one mapping between a spec and a job row, both ways: every option is a column of the same name, but
    # ``timeout`` (``timeout_s``); a new option needs only its field here and its column in the model.

    def row_fields(self, queue: str, params: dict[str, Any]) -> dict[str, Any]:
        """The job row's columns for this spec, with its validated ``params`` and the ``queue`` it goes to."""
        row = {_COLUMNS.get(name, name): getattr(self, name) for name in type(self).model_fields}
        weights = str(self.weights.expanduser().resolve()) if self.weights else None
        # local-dir:PATH as a worker elsewhere finds it (each of a task's several backbones too)
        backbone = ",".join(absolute(ref.name) for ref in self.backbone_ref.each()) if self.backbone else None
        if self.backbone and one_folder(self.backbone):
            backbone = absolute(self.backbone)  # one folder whose path has a comma (", " kept as written)
        return row | {"weights": weights, "params": params, "queue": queue, "backbone": backbone}

    @classmethod
    def of_job(cls, job) -> JobSpec:
        """The spec job row ``job`` was submitted with, as a retry of it (its parent is the job, no group)."""
        spec = {name: getattr(job, _COLUMNS.get(name, name)) for name in cls.model_fields}
        return cls(**spec | {"tags": job.tags or {}, "params": job.params or {}, "parent_id": job.id, "group_id": None})


def one_folder(backbone: str) -> bool:
    """Whether ``backbone`` is one existing ``local-dir:`` folder, a comma in its path though it may have."""
    return backbone.startswith(LOCAL) and local_path(backbone).is_dir()


_COLUMNS = {"timeout": "timeout_s"}  # the spec's options whose job column has another name


def validate_params(plugin: TaskPlugin, params: dict[str, Any]) -> TaskParams:
    try:
        return plugin.params.model_validate(params)
    except ValidationError as exc:
        raise BadInput(f"{plugin.name}: {describe_validation_error(exc)}") from exc


def validate_spec(
    spec: JobSpec,
    env: Environment,
    tasks: Registry | None = None,
    providers: Registry | None = None,
) -> tuple[TaskPlugin, TaskParams]:
    """Checks everything that can be checked before queueing; raises BadInput naming the fix.

    Returns:
        The task plugin and the validated parameters.
    """
    tasks = tasks or env.tasks
    plugin: TaskPlugin = tasks.get(spec.task)
    params = validate_params(plugin, spec.params)
    if plugin.needs_backbone and not spec.backbone:
        raise BadInput(f"{plugin.name} needs a backbone; pass --backbone NAME (`tlq backbones` lists them)")
    if spec.weights is not None and not spec.backbone:
        raise BadInput("--weights needs --backbone ARCH naming the architecture the weights belong to")
    if spec.backbone:
        refs = spec.backbone_ref.each()
        if not refs:
            raise BadInput(f"--backbone {spec.backbone!r} names no backbone; pass --backbone NAME")
        if len(refs) > 1 and not plugin.many_backbones and one_folder(spec.backbone):
            refs = [spec.backbone_ref]  # one model folder whose path has a comma
        elif len(refs) > 1 and not plugin.many_backbones:
            raise BadInput(
                f"{plugin.name} takes one backbone, not {len(refs)}; "
                f"`tlq sweep {plugin.name} --backbone {spec.backbone}` queues one job for each"
            )
        if len(refs) > 1 and spec.weights is not None:
            raise BadInput("--weights belongs to one backbone; compare fine-tuned models by job:ID instead")
        stored = ",".join(absolute(ref.name) for ref in refs)
        if len(stored) > BACKBONE_CHARS:
            raise BadInput(
                f"--backbone is {len(stored)} characters as stored, over the {BACKBONE_CHARS} a job keeps; "
                + ("compare fewer backbones per job" if len(refs) > 1 else "move the model folder to a shorter path")
            )
        for ref in refs:
            try:
                provider_for(ref.name, providers or env.backbones).check(ref, env)
            except BadInput as exc:
                if len(refs) > 1 and ref.name.startswith(LOCAL):  # local-dir:a,b/c is a folder and b/c
                    raise BadInput(
                        f"{exc} (a comma ends each name of a --backbone list: link a folder whose path has one "
                        "to a path without)"
                    ) from exc
                raise
    if plugin.check is not None:
        plugin.check(params, env, spec.backbone_ref)
    return plugin, params
