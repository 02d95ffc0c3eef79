"""lr-find: the learning-rate range test alone, on the data, strategy and optimizer a finetune job would train with.

    tlq submit lr-find --backbone job:1 --data ./train --strategy full --wait

It records the curve (``lr_find.csv``, ``lr_find.png``) and the suggestion (metric ``lr_chosen``, and ``lr_valley``,
``lr_minimum``, ``lr_steep`` of each rule) and trains nothing that is kept: finetune's ``--lr auto`` runs the same
test first and trains at ``lr_chosen``. Its options are finetune's that shape a training step, so a finetune
command line with ``finetune`` changed to ``lr-find`` (and the epoch options left out) tests what that job would
train on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationError, model_validator

from tlq.env import Environment
from tlq.ml.lr_find import DEFAULT_RULE, record
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, DataSource, Number, Precision, describe_validation_error
from tlq.plugins.task import TaskParams, TaskPlugin
from tlq.tasks import finetune
from tlq.tasks.finetune import FinetuneParams, Strategy

SAME = FinetuneParams.model_fields  # the options shared with finetune: the same help, defaults and limits


class LrFindParams(TaskParams):
    data: DataSource = SAME["data"]
    val_data: DataSource | None = SAME["val_data"]
    val_split: Number = SAME["val_split"]
    label_pattern: str | None = SAME["label_pattern"]
    strategy: Strategy = SAME["strategy"]
    freeze_epochs: int = Field(3, ge=0, le=99_999, description=SAME["freeze_epochs"].description)
    backbone_lr_mult: Number | None = SAME["backbone_lr_mult"]
    weight_decay: Number = SAME["weight_decay"]
    batch_size: BatchSize | None = SAME["batch_size"]
    optimizer: Literal["adamw", "sgd"] = SAME["optimizer"]
    label_smoothing: Number = SAME["label_smoothing"]
    augment: Literal["none", "light", "strong"] = SAME["augment"]
    precision: Precision = SAME["precision"]
    seed: int = SAME["seed"]
    image_size: int | None = SAME["image_size"]
    loader_workers: int | None = SAME["loader_workers"]
    start_lr: Number = Field(1e-7, gt=0, le=10, description="The first learning rate of the test.")
    end_lr: Number = Field(10.0, gt=0, le=1000, description="The last (the test stops sooner if the loss diverges).")
    steps: int = Field(100, ge=3, le=10_000, description="Training steps, each at a higher lr (batches reused).")
    rule: Literal["valley", "minimum", "steep"] = Field(
        DEFAULT_RULE,
        description="valley: 2/3 down the longest descent; minimum: a tenth of the lowest loss's lr; steep: where "
        "the loss falls fastest.",
    )

    @model_validator(mode="after")
    def _rising(self):
        if self.end_lr <= self.start_lr:
            raise ValueError(f"--end-lr ({self.end_lr:g}) must be above --start-lr ({self.start_lr:g})")
        return self

    @model_validator(mode="after")
    def _a_finetune_would_take_them(self):
        # The shared options are checked together as finetune checks them (a --label-pattern that does not
        # compile, say), so a bad one is refused at submit in one line, not by a traceback from `check`.
        try:
            self.as_finetune()
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc)) from None
        return self

    def as_finetune(self) -> FinetuneParams:
        """The finetune job this test is for: its first epoch is the phase the test runs in (freeze-unfreeze's
        head, --freeze-epochs 0 or full: everything)."""
        shared = self.model_dump(include=set(SAME) & set(type(self).model_fields))
        return FinetuneParams(**shared, lr="auto", epochs=self.freeze_epochs + 1)


def check(params: LrFindParams, env: Environment, backbone=None) -> None:
    finetune.check(params.as_finetune(), env, backbone)


def memory(params: LrFindParams, env: Environment, backbone=None):
    return finetune.memory(params.as_finetune(), env, backbone)


def run(ctx: JobContext, params: LrFindParams) -> None:
    fit, _model, backbone, _config, _classes = finetune.prepare(ctx, params.as_finetune())
    curve = fit.lr_range_test(start_lr=params.start_lr, end_lr=params.end_lr, steps=params.steps, rule=params.rule)
    record(ctx, curve, f"job {ctx.job_id}: {backbone.arch}, {params.strategy}")


task: TaskPlugin[LrFindParams] = TaskPlugin(
    name="lr-find",
    summary="The learning-rate range test on a finetune job's data and strategy: the loss curve and an lr to use.",
    params=LrFindParams,
    run=run,
    check=check,
    memory=memory,
    headline="lr_chosen",
)
