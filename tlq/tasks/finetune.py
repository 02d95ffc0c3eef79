"""finetune: adapt a backbone to labelled images with the lesson's strategies, resumably.

Strategies: ``linear-probe`` (features once, then a linear head), ``freeze`` (frozen backbone and batch-norm
statistics, head trained on augmented images), ``freeze-unfreeze`` (head first, then everything with the
backbone at a lower learning rate) and ``full``. A checkpoint after every epoch lets a job whose worker died
resume under the same id; its model (safetensors + model card) becomes ``--backbone job:ID`` for later jobs.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.finetune_loops import CHECKPOINT, ImageTraining, LinearProbe
from tlq.ml.labelled import check_label_pattern, load_labelled, load_trainable
from tlq.ml.sized_defaults import (
    DEFAULT_BATCH,
    DEFAULT_EPOCHS,
    MAX_SIZED_EPOCHS,
    MIN_SIZED_BATCH,
    MIN_UPDATES,
    sized_to_data,
)
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, DataSource, Number, Precision, parse_number
from tlq.plugins.task import TaskParams, TaskPlugin


def _learning_rate(value):
    """A number in (0, 10], or ``auto``, with one message for anything else (a union would give two)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        value = parse_number(value)
    except ValueError as exc:
        raise ValueError(f"{exc}, or auto to choose it by a range test") from exc
    if isinstance(value, int | float) and not 0 < value <= 10:
        raise ValueError(f"{value:g} is out of range; give a learning rate above 0 and at most 10, or auto")
    return value


LearningRate = Annotated[Literal["auto"] | float, BeforeValidator(_learning_rate)]
Strategy = Literal["linear-probe", "freeze", "freeze-unfreeze", "full"]
EPOCH_METRICS = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "val_top5",  # val_top{K} with --top-k K, K capped at the number of classes
    "lr",
    "epoch_seconds",
    "images_per_second",
    "data_wait_share",
)


class FinetuneParams(TaskParams):
    data: DataSource = Field(
        description="Training images: class subfolders, a CSV manifest (path,label), or a flat folder with "
        "--label-pattern."
    )
    val_data: DataSource | None = Field(None, description="Validation images (same layouts); else --val-split.")
    val_split: Number = Field(0.2, gt=0, lt=1, description="Stratified, seeded share of --data for validation.")
    label_pattern: str | None = Field(
        None, description="Regex on file names whose first group is the label, e.g. '^(.+)_\\d+\\.jpg$'."
    )
    strategy: Strategy = Field(
        "freeze-unfreeze",
        description="linear-probe: features once + linear head; freeze: "
        "head only; freeze-unfreeze: head, then all; full: all from the start.",
    )
    epochs: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description=f"Epochs in all (default {DEFAULT_EPOCHS}; on small datasets enough for {MIN_UPDATES} updates, "
        f"at most {MAX_SIZED_EPOCHS}).",
    )
    freeze_epochs: int = Field(3, ge=0, description="freeze-unfreeze: head-only epochs before unfreezing.")
    lr: LearningRate = Field(
        1e-3, description="Learning rate of the head; auto: chosen by a range test on this job's data (lr_find.png)."
    )
    backbone_lr_mult: Number | None = Field(
        None, ge=0, le=100, description="Backbone lr = lr x this (default 0.1 for freeze-unfreeze, 1 for full)."
    )
    weight_decay: Number = Field(0.01, ge=0, le=10, description="Weight decay (not of norm layers and biases).")
    batch_size: BatchSize | None = Field(
        None,
        description=f"Images per step (default {DEFAULT_BATCH}; at most a quarter of the training images, at least "
        f"{MIN_SIZED_BATCH}).",
    )
    optimizer: Literal["adamw", "sgd"] = Field(
        "adamw", description="timm's optimizer: adamw, or sgd (Nesterov); no weight decay on norms and biases."
    )
    schedule: Literal["cosine", "step", "onecycle", "constant"] = Field(
        "cosine",
        description="Learning-rate schedule: cosine to 0, step (x0.1 after each third), onecycle, or constant.",
    )
    warmup_epochs: int = Field(
        0, ge=0, le=1000, description="Epochs of linear warmup from 0 to --lr (not onecycle), anew in each phase."
    )
    label_smoothing: Number = Field(0.0, ge=0, lt=1, description="Label smoothing of the loss.")
    augment: Literal["none", "light", "strong"] = Field(
        "light", description="none; light: crops and flips; strong: RandAugment and erasing."
    )
    early_stop: int | None = Field(
        None, ge=1, description="Stop after this many epochs without a better val_acc; keep the best epoch."
    )
    top_k: int = Field(
        5,
        ge=1,
        le=1000,
        description="Record val_top{K}: the share of validation images whose class is among the K most likely "
        "(K capped at the number of classes).",
    )
    precision: Precision = Field(
        "auto", description="auto: the fastest of fp32, fp32 in channels_last memory and bf16, measured here."
    )
    seed: int = Field(0, ge=0, le=2**31, description="Seed of the split, initialization and data order.")
    image_size: int | None = Field(None, ge=8, le=2048, description="Input size (default: the model's own).")
    ddp: int = Field(
        1,
        ge=1,
        le=64,
        description="Train as this many processes under torch.distributed (DistributedDataParallel; gloo on CPU, "
        "nccl on GPUs); --batch-size is per process.",
    )
    loader_workers: int | None = Field(None, ge=0, le=64, description="Image-decoding processes.")

    @model_validator(mode="after")
    def _consistent(self):
        # Epochs left to tlq are at least DEFAULT_EPOCHS (sized_to_data only adds), so the checks hold for any.
        epochs = self.epochs or DEFAULT_EPOCHS
        said = f"{epochs}" if self.epochs else f"{epochs}, the default"
        if self.strategy == "freeze-unfreeze" and self.freeze_epochs >= epochs:
            raise ValueError(f"freeze-unfreeze needs --freeze-epochs ({self.freeze_epochs}) below --epochs ({said})")
        if self.warmup_epochs and self.schedule == "onecycle":
            raise ValueError("--schedule onecycle warms up by itself; drop --warmup-epochs, or use cosine or step")
        if self.warmup_epochs >= epochs:
            raise ValueError(f"--warmup-epochs ({self.warmup_epochs}) must be below --epochs ({said})")
        check_label_pattern(self.label_pattern)
        if self.ddp > 1 and self.strategy == "linear-probe":
            raise ValueError("--ddp trains through the backbone; a linear probe runs in one process (drop --ddp)")
        if self.ddp > 1 and self.lr == "auto":
            raise ValueError("--lr auto runs in one process; run `tlq submit lr-find` first and pass its lr_chosen")
        return self

    def run_processes(self) -> int:
        return self.ddp

    @property
    def backbone_multiplier(self) -> float:
        if self.backbone_lr_mult is not None:
            return self.backbone_lr_mult
        return 0.1 if self.strategy == "freeze-unfreeze" else 1.0


def load_sets(params: FinetuneParams):
    """Training and validation files with class indices; validation classes must be training classes."""
    train = load_trainable(params.data, params.label_pattern)
    val = None
    if params.val_data is not None:
        val = load_labelled(params.val_data, params.label_pattern)
        if not val.files:
            raise BadInput(f"--val-data {params.val_data} holds no labelled images; use the same layout as --data")
        unknown = sorted(set(val.classes) - set(train.classes))
        if unknown:
            raise BadInput(f"--val-data has classes not in --data ({', '.join(unknown[:5])}); they cannot be learned")
    return train, val


def check(params: FinetuneParams, env: Environment, backbone=None) -> None:
    load_sets(params)


def split_sets(params: FinetuneParams, train, val):
    """(train files, train targets, val files, val targets, classes), the split stratified and seeded."""
    from tlq.ml.labelled import stratified_split

    classes = train.classes
    index = {name: i for i, name in enumerate(classes)}
    if val is None:
        train_idx, val_idx = stratified_split(train.labels, params.val_split, params.seed)
        val_files = [train.files[i] for i in val_idx]
        train_files = [train.files[i] for i in train_idx]
    else:
        train_files, val_files = train.files, val.files
    if not val_files:
        raise BadInput("the validation set is empty; add images, raise --val-split, or pass --val-data")
    return (
        train_files,
        [index[f.label] for f in train_files],
        val_files,
        [index[f.label] for f in val_files],
        classes,
    )


def build_transforms(data_config: dict, augment: str):
    """Evaluation and training transforms from the model's own data config (timm's create_transform)."""
    import timm.data

    eval_tf = timm.data.create_transform(**data_config, is_training=False)
    if augment == "none":
        return eval_tf, eval_tf
    config = {k: v for k, v in data_config.items() if k in ("input_size", "interpolation", "mean", "std")}
    if augment == "light":
        train_tf = timm.data.create_transform(
            **config, is_training=True, scale=(0.6, 1.0), hflip=0.5, color_jitter=None, auto_augment=None
        )
    else:
        train_tf = timm.data.create_transform(
            **config, is_training=True, scale=(0.3, 1.0), hflip=0.5, auto_augment="rand-m9-mstd0.5", re_prob=0.25
        )
    return eval_tf, train_tf


def prepare(ctx: JobContext, params: FinetuneParams):
    """Everything before the first epoch: data, split, model, precision, and the fit (a ``LinearProbe`` or an
    ``ImageTraining``); returns (fit, model, backbone, data_config, classes). The lr-find task shares it."""

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.distributed import from_main
    from tlq.ml.features import pooled_features_of, scan_images
    from tlq.ml.precision import prepare_model
    from tlq.ml.training import seed_everything

    train, val = load_sets(params)
    train_files, train_y, val_files, val_y, classes = split_sets(params, train, val)
    params.epochs, params.batch_size = sized_to_data(params.epochs, params.batch_size, len(train_files), ctx.log)
    seed_everything(params.seed)
    backbone = ctx.load_backbone(num_classes=len(classes))
    model = backbone.model
    if backbone.class_names is not None and list(backbone.class_names) != list(classes):
        # A job:ID model with as many classes, but other ones: its head means nothing here.
        model.reset_classifier(len(classes))
    data_config = dict(backbone.data_config)
    if params.image_size:
        data_config["input_size"] = (3, params.image_size, params.image_size)
    kind = "inference" if params.strategy == "linear-probe" else "training"
    passes = 1 if kind == "inference" else params.epochs
    images = passes * (len(train_files) + len(val_files))
    shape = tuple(data_config["input_size"])
    workload = Workload(kind, model, shape, params.batch_size, backbone.arch, images=images)
    precision = from_main(lambda: resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home,
                                                    ctx.log))  # fmt: skip
    prepare_model(model, ctx.device, precision)
    eval_tf, train_tf = build_transforms(data_config, params.augment)
    ctx.log.info(
        "finetune %s (%s): %d train / %d val images, %d classes, %s, %s on %s",
        backbone.arch,
        backbone.source,
        len(train_files),
        len(val_files),
        len(classes),
        params.strategy,
        precision,
        ctx.device,
    )

    unlabelled = [(rel, reason) for rel, reason in train.unlabelled]
    if params.strategy == "linear-probe":
        # The feature pass decodes every file once, so it doubles as the check for unreadable ones.
        def features_of(files, stage):
            return pooled_features_of(
                ctx, backbone, files, eval_tf, precision, params.batch_size, params.loader_workers, stage
            )

        train_feats, val_feats = features_of(train_files, "features (train)"), features_of(val_files, "features (val)")
        skipped = [(train_files[i].rel, r) for i, r in train_feats.skipped] + [
            (val_files[i].rel, r) for i, r in val_feats.skipped
        ]
        record_data_metrics(ctx, len(train_feats.kept), len(val_feats.kept), classes, skipped + unlabelled)
        ctx.metric("cached_images", train_feats.cached + val_feats.cached)
        fit = LinearProbe(ctx, params, model, train_feats, train_y, val_feats, val_y)
    else:
        every = train_files + val_files
        readable, bad = scan_images(
            every, params.loader_workers, on_batch=lambda done, total: ctx.progress(done, total, "checking images")
        )
        ok = set(readable)
        keep_train = [i for i in range(len(train_files)) if i in ok]
        keep_val = [i for i in range(len(val_files)) if i + len(train_files) in ok]
        missing = sorted(set(classes) - {classes[train_y[i]] for i in keep_train})
        if missing:
            raise BadInput(f"class {missing[0]!r} has no readable training image; add images or remove the class")
        train_files, train_y = [train_files[i] for i in keep_train], [train_y[i] for i in keep_train]
        val_files, val_y = [val_files[i] for i in keep_val], [val_y[i] for i in keep_val]
        record_data_metrics(
            ctx, len(train_files), len(val_files), classes, [(every[i].rel, r) for i, r in bad] + unlabelled
        )
        fit = ImageTraining(ctx, params, model, precision, train_files, train_y, val_files, val_y, eval_tf, train_tf)
    return fit, model, backbone, data_config, classes


def run(ctx: JobContext, params: FinetuneParams) -> None:
    from tlq.ml import distributed
    from tlq.ml.reports import write_finetune_reports
    from tlq.ml.training import load_checkpoint, rng_state, set_rng_state

    if params.ddp > 1 and not distributed.active():  # the job's process: start the ranks, each runs this again
        from tlq.ml.ddp_launch import launch

        return launch(ctx, params, run, params.ddp)
    fit, model, backbone, data_config, classes = prepare(ctx, params)

    checkpoint_path = ctx.artifacts.path(CHECKPOINT)
    start_epoch = 1
    state = None
    if checkpoint_path.exists():
        try:
            state = load_checkpoint(checkpoint_path)
        except Exception as exc:  # truncated, or not a checkpoint at all: never a reason to fail the job
            ctx.log.warning("job %s: %s is unreadable (%s); training from epoch 1", ctx.job_id, CHECKPOINT, exc)
            state = {}
    if state is not None and not ctx.origin.wrote(state.get("origin")):
        # Another job's checkpoint (a recreated database reuses job ids; two databases may share the artifacts
        # directory), or this job's under other parameters: resuming from it would invent results.
        ctx.log.warning("job %s: %s was not written by this job; training from epoch 1", ctx.job_id, CHECKPOINT)
        ctx.artifacts.remove(CHECKPOINT)
        state = None
    if params.lr == "auto" and state is not None:  # a resumed attempt keeps what the first one chose
        params.lr = state["lr"]
    elif params.lr == "auto":  # the range test, before the optimizer is built; it checkpoints its choice (epoch 0)
        fit.choose_lr(f"job {ctx.job_id}: {backbone.arch}, {params.strategy}, --lr auto")
    if state is not None:
        fit.restore(state)
        set_rng_state(state["rng"])
        start_epoch = state["epoch"] + 1
        ctx.log.info("resuming job %s after epoch %d", ctx.job_id, state["epoch"])
        ctx.metric("resumed_from_epoch", state["epoch"])
        ctx.forget_metrics_after(state["epoch"])

    for epoch in range(start_epoch, params.epochs + 1):
        result = fit.epoch(epoch)
        ctx.metrics(result, step=epoch, epoch=epoch)
        fit.save(epoch, rng_state())
        if fit.should_stop():
            ctx.log.info("early stop after epoch %d (best %d)", epoch, fit.best_epoch)
            break

    if not distributed.is_main():  # rank 0 alone validates and writes what the job leaves
        return
    final = fit.finish()
    write_finetune_reports(ctx, params, model, backbone, data_config, classes, final, fit)
    ctx.artifacts.remove(CHECKPOINT)


def record_data_metrics(ctx, n_train: int, n_val: int, classes, skipped) -> None:
    from tlq.tasks.feature_extract import csv_text

    ctx.metrics({"train_images": n_train, "val_images": n_val, "classes": len(classes), "skipped": len(skipped)})
    if skipped:
        ctx.artifacts.write_text("skipped", "skipped.csv", csv_text(["path", "reason"], skipped))
    if n_train == 0 or n_val == 0:
        raise BadInput("no readable images are left to train or validate on; see skipped.csv for why")


def memory(params: FinetuneParams, env: Environment, backbone=None):
    """The job's memory: training keeps every activation of the batch; a linear probe only runs inference."""
    from tlq.ml.memory import backbone_profile, inference_need, training_need

    found = backbone_profile(env, backbone, params.image_size)
    if found is None:
        return None
    model, size = found
    loaders = params.loader_workers or 0
    batch = params.batch_size or DEFAULT_BATCH  # the most a batch left to tlq can be
    if params.strategy == "linear-probe":
        return inference_need(model, batch, size, params.precision, loaders)
    return training_need(model, batch, size, params.precision, loaders, params.strategy != "freeze")


task: TaskPlugin[FinetuneParams] = TaskPlugin(
    name="finetune",
    summary="Fine-tune a backbone on labelled images (linear-probe, freeze, freeze-unfreeze or full), resumably.",
    params=FinetuneParams,
    run=run,
    check=check,
    memory=memory,
    headline="val_acc",
)
