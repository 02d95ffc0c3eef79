"""transferability: which of several backbones will transfer best to a labelled image set, without fine-tuning any.

``tlq submit transferability --backbone job:12,resnet18,vgg16 --data DIR`` runs each backbone once over the images
(pooled pre-logits features, served from the feature cache when they were computed before) and scores the features
by LogME (``tlq.ml.logme``): the evidence that the labels follow linearly from them. One forward pass per backbone
ranks them about as a linear probe on each would, at a fraction of the cost of fine-tuning each.

Artifacts: ``transferability.csv`` (backbone, score, rank; best first), ``transferability.png`` (the scores as
bars) and, when files were skipped, ``skipped.csv``. Metrics: ``logme`` (the best backbone's score, the headline),
``logme_<backbone>`` for each (the name with every character but letters, digits, ``_`` and ``-`` as ``_``, so
``--where 'logme_job_12 > 0'`` finds it; of a name over 58 characters its end; two backbones whose names give one
metric name are refused at submit), and images, classes, skipped, backbones, cached_images. A backbone whose
features hold NaN (a diverged model, bf16 overflow) fails the job in one line naming it.
"""

from __future__ import annotations

import re

from pydantic import Field, model_validator

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.labelled import check_label_pattern, load_trainable
from tlq.ml.reports import csv_text, pyplot
from tlq.plugins.backbone import BackboneRef, absolute
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, DataSource, Precision
from tlq.plugins.task import TaskParams, TaskPlugin
from tlq.tasks.feature_extract import FeatureExtractParams

FEATURE_PASS = FeatureExtractParams.model_fields  # the feature pass's options: feature-extract's help and limits


class TransferabilityParams(TaskParams):
    data: DataSource = Field(
        description="Labelled images to transfer to: class subfolders, a CSV manifest (path,label), or a flat "
        "folder with --label-pattern."
    )
    label_pattern: str | None = Field(
        None, description="Regex on file names whose first group is the label, e.g. '^(.+)_\\d+\\.jpg$'."
    )
    image_size: int | None = Field(
        None, ge=8, le=2048, description="Input size for every backbone (default: each backbone's own)."
    )
    batch_size: BatchSize | None = FEATURE_PASS["batch_size"]
    precision: Precision = FEATURE_PASS["precision"]
    loader_workers: int | None = FEATURE_PASS["loader_workers"]
    seed: int = Field(
        0, ge=0, le=2**31, description="Seed of random initializations (--no-pretrained): the same baseline each run."
    )

    @model_validator(mode="after")
    def _pattern_compiles(self):
        check_label_pattern(self.label_pattern)
        return self


def metric_name(backbone: str) -> str:
    """``logme_job_12`` for ``job:12``: a name the ``--where`` language reads, within the 64 characters a metric
    name may have: of a longer name, its end (local-dir:/a/deep/path/resnet_b differs from .../resnet_a there)."""
    return "logme_" + re.sub(r"[^\w-]", "_", backbone)[-58:]


def load_set(params: TransferabilityParams):
    """The labelled files, checked to hold two classes or more."""
    return load_trainable(params.data, params.label_pattern)


def check(params: TransferabilityParams, env: Environment, backbone: BackboneRef | None = None) -> None:
    # As the job will name them: local-dir:m and local-dir:./m are one folder, and one metric
    names = [absolute(ref.name) for ref in backbone.each()] if backbone is not None else []
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise BadInput(f"--backbone names {twice[0]} twice; name each backbone once")
    by_metric: dict[str, str] = {}
    for name in names:  # local-dir:m/a.b and local-dir:m/a_b, or two names alike for 58 characters, share one
        other = by_metric.setdefault(metric_name(name), name)
        if other != name:
            raise BadInput(
                f"--backbone {other} and {name} would both record metric {metric_name(name)}; compare them in two jobs"
            )
    load_set(params)


def run(ctx: JobContext, params: TransferabilityParams) -> None:
    import numpy as np
    import timm.data
    import torch

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.features import inference_batch_size, pooled_features_of
    from tlq.ml.logme import logme

    labelled = load_set(params)
    files, classes = labelled.files, labelled.classes
    labels = np.array([classes.index(f.label) for f in files])
    batch_size = inference_batch_size(params.batch_size, ctx.device)
    scores: dict[str, float] = {}
    skipped: list[tuple[str, str]] = list(labelled.unlabelled)
    images = cached = 0
    for number, ref in enumerate(ctx.backbones, start=1):
        torch.manual_seed(params.seed)  # a random initialization is drawn the same way in every job
        backbone = ctx.load_backbone(num_classes=0, ref=ref)
        data_config = dict(backbone.data_config)
        if params.image_size:
            data_config["input_size"] = (3, params.image_size, params.image_size)
        shape = tuple(data_config["input_size"])
        workload = Workload("inference", backbone.model, shape, batch_size, backbone.arch, images=len(files))
        precision = resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home, ctx.log)
        transform = timm.data.create_transform(**data_config, is_training=False)
        stage = f"features of {ref.name} ({number}/{len(ctx.backbones)})"
        result = pooled_features_of(
            ctx, backbone, files, transform, precision, batch_size, params.loader_workers, stage
        )
        if number == 1:  # whether a file decodes does not depend on the model: the first pass finds them all
            skipped += [(files[i].rel, reason) for i, reason in result.skipped]
            images = len(result.kept)
            if skipped:
                ctx.artifacts.write_text("skipped", "skipped.csv", csv_text(["path", "reason"], skipped))
        kept_labels = labels[result.kept]
        if len(np.unique(kept_labels)) < 2:
            raise BadInput(f"fewer than 2 classes of {params.data} have a readable image; see skipped.csv for why")
        if not np.isfinite(result.features).all():
            raise BadInput(
                f"{ref.name} gives NaN or infinite features of {params.data} (at {precision}); "
                "leave it out, or pass --precision fp32 if it was bf16"
            )
        scores[ref.name] = logme(result.features, kept_labels)
        cached += result.cached
        ctx.log.info("%s: LogME %.4f over %d images (%s)", ref.name, scores[ref.name], len(result.kept), precision)
        ctx.metric(metric_name(ref.name), scores[ref.name])
        del backbone, result  # one model in memory at a time
    ranked = sorted(scores.items(), key=lambda item: -item[1])
    rows = [(name, f"{score:.6f}", rank) for rank, (name, score) in enumerate(ranked, start=1)]
    ctx.artifacts.write_text("ranking", "transferability.csv", csv_text(["backbone", "score", "rank"], rows))
    ctx.artifacts.save_figure("chart", "transferability.png", ranking_figure(ranked, params.data.name))
    ctx.metrics(
        {
            "logme": ranked[0][1],
            "backbones": len(ranked),
            "images": images,
            "classes": len(classes),
            "skipped": len(skipped),
            "cached_images": cached,
        }
    )


def ranking_figure(ranked: list[tuple[str, float]], dataset: str):
    """The backbones' LogME as horizontal bars, best on top, each labelled with its score."""
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(7, 1.2 + 0.45 * len(ranked)))
    names = [name for name, _ in ranked][::-1]
    values = [score for _, score in ranked][::-1]
    colors = ["#bbbbbb"] * (len(ranked) - 1) + ["#2a7ab9"]
    bars = axes.barh(names, values, color=colors)
    axes.bar_label(bars, labels=[f"{v:.3f}" for v in values], padding=3, fontsize=8)
    axes.axvline(0, color="black", linewidth=0.8)
    axes.set_xlabel("LogME (higher transfers better)")
    axes.set_title(f"Which backbone will transfer to {dataset}?")
    axes.margins(x=0.15)
    figure.tight_layout()
    return figure


def memory(params: TransferabilityParams, env: Environment, backbone: BackboneRef | None = None):
    """The largest of the backbones' inference needs: they run one after another."""
    from tlq.ml.memory import inference_memory

    needs = [inference_memory(params, env, ref) for ref in (backbone.each() if backbone is not None else [])]
    known = [need for need in needs if need is not None]
    return max(known, key=lambda need: need.total) if known else None


task: TaskPlugin[TransferabilityParams] = TaskPlugin(
    name="transferability",
    summary="Rank backbones (--backbone a,b,c) for labelled images by LogME, one feature pass each, no fine-tuning.",
    params=TransferabilityParams,
    run=run,
    check=check,
    memory=memory,
    many_backbones=True,
    headline="logme",
)
