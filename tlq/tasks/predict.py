"""predict: class predictions for every image under a folder, from a fine-tuned ``job:ID`` model or any
backbone that keeps its classifier (an ImageNet timm model, say).

Artifacts: ``predictions.csv`` (path, label, prediction, probability, top-k). When the images sit in class
folders named like the model's classes, or ``--label-pattern`` reads those from their names as finetune's does,
also the metrics ``accuracy`` and ``top{K}_accuracy`` (the true class among the K listed, as finetune's
``val_top{K}``), and a confusion matrix.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.images import ImageFile, discover_files
from tlq.ml.labelled import check_label_pattern, compile_pattern, label_from_name
from tlq.ml.memory import inference_memory
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, DataDir, Precision
from tlq.plugins.task import TaskParams, TaskPlugin


class PredictParams(TaskParams):
    data: DataDir = Field(description="Folder of images; class subfolders, if any, are taken as true labels.")
    label_pattern: str | None = Field(
        None, description="Regex on file names whose first group is the true label (a flat folder), as finetune's."
    )
    top_k: int = Field(
        5, ge=1, le=1000, description="Classes to list per image (at most the model's); labelled: top{K}_accuracy."
    )
    batch_size: BatchSize | None = Field(
        None, description="Images per forward pass (default: 16 on a CPU, 64 on a GPU)."
    )
    precision: Precision = Field(
        "auto", description="auto: the fastest of fp32, fp32 in channels_last memory and bf16, measured here."
    )
    loader_workers: int | None = Field(None, ge=0, le=64, description="Image-decoding processes.")

    @field_validator("label_pattern")
    @classmethod
    def _valid_pattern(cls, pattern: str | None) -> str | None:
        check_label_pattern(pattern)
        return pattern


def labelled_files(params: PredictParams) -> list[ImageFile]:
    """Every file under ``--data``, labelled by its class folder, or by ``--label-pattern`` on its name (a file
    that does not match is still predicted, with no label)."""
    files = discover_files(params.data)
    if params.label_pattern is None:
        return files
    regex = compile_pattern(params.label_pattern)
    return [ImageFile(f.path, f.rel, label_from_name(regex, f), f.problem) for f in files]


def check(params: PredictParams, env: Environment, backbone=None) -> None:
    files = labelled_files(params)
    if not files:
        raise BadInput(f"no files under {params.data}; point --data at a folder of images")
    if params.label_pattern is not None and not any(f.label for f in files):
        raise BadInput(
            f"--label-pattern {params.label_pattern!r} matches none of the {len(files)} files under {params.data}; "
            "test it on a file name, e.g. '^(.+)_\\d+\\.jpg$' for Abyssinian_12.jpg, or drop it"
        )


def run(ctx: JobContext, params: PredictParams) -> None:
    import numpy as np
    import timm.data
    import torch

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.features import inference_batch_size, pooled_features_of
    from tlq.ml.reports import confusion_csv, confusion_figure, confusion_matrix, per_class_csv
    from tlq.tasks.feature_extract import csv_text

    files = labelled_files(params)
    backbone = ctx.load_backbone(num_classes=None)
    num_classes = getattr(backbone.model, "num_classes", 0)
    if not num_classes:
        raise BadInput(
            f"{ctx.backbone.name} has no classifier to predict with; fine-tune it first (tlq submit finetune)"
        )
    classes = backbone.class_names or [f"class_{i}" for i in range(num_classes)]
    batch_size = inference_batch_size(params.batch_size, ctx.device)
    shape = tuple(backbone.data_config["input_size"])
    workload = Workload("inference", backbone.model, shape, batch_size, backbone.arch, images=len(files))
    precision = resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home, ctx.log)
    transform = timm.data.create_transform(**backbone.data_config, is_training=False)
    result = pooled_features_of(
        ctx, backbone, files, transform, precision, batch_size, params.loader_workers, "predicting"
    )
    if not result.kept:
        raise BadInput(f"none of the {len(files)} files under {params.data} is a readable image")
    head = backbone.model.get_classifier().float().cpu().eval()
    with torch.no_grad():  # the classifier on the pooled features, which the feature cache can serve
        probs = torch.softmax(head(torch.from_numpy(result.features)), dim=1).numpy()
    k = min(params.top_k, num_classes)
    top = np.argsort(-probs, axis=1)[:, :k]
    rows = []
    for row, i in enumerate(result.kept):
        best = top[row]
        rows.append(
            (
                files[i].rel,
                files[i].label or "",
                classes[best[0]],
                f"{probs[row, best[0]]:.6f}",
                ";".join(f"{classes[c]}:{probs[row, c]:.4f}" for c in best),
            )
        )
    ctx.artifacts.write_text(
        "predictions", "predictions.csv", csv_text(["path", "label", "prediction", "probability", "top_k"], rows)
    )
    metrics = {
        "images": len(result.kept),
        "skipped": len(result.skipped),
        "images_per_second": result.images_per_second,
        "data_wait_share": result.data_wait_share,
        "cached_images": result.cached,
    }
    index = {name: i for i, name in enumerate(classes)}
    labelled = [(row, index[files[i].label]) for row, i in enumerate(result.kept) if files[i].label in index]
    given = sorted({files[i].label for i in result.kept if files[i].label})
    if given and not labelled:
        ctx.log.warning(
            "no accuracy: none of the true labels %s names a class of %s %s; labels must match its class names",
            given[:5], ctx.backbone.name, classes[:3],
        )  # fmt: skip
    if labelled:
        predicted = [int(top[row, 0]) for row, _ in labelled]
        truth = [label for _, label in labelled]
        metrics["accuracy"] = float(np.mean(np.asarray(predicted) == np.asarray(truth)))
        metrics[f"top{k}_accuracy"] = float(np.mean([label in top[row] for row, label in labelled]))
        metrics["labelled_images"] = len(labelled)
        present = sorted(set(truth) | set(predicted))
        names = [classes[c] for c in present]
        remap = {c: j for j, c in enumerate(present)}
        matrix = confusion_matrix([remap[p] for p in predicted], [remap[t] for t in truth], len(present))
        ctx.artifacts.write_text("confusion_matrix", "confusion_matrix.csv", confusion_csv(matrix, names))
        ctx.artifacts.save_figure("confusion_matrix_png", "confusion_matrix.png", confusion_figure(matrix, names))
        ctx.artifacts.write_text("per_class_accuracy", "per_class_accuracy.csv", per_class_csv(matrix, names))
    if result.skipped:
        ctx.artifacts.write_text(
            "skipped", "skipped.csv", csv_text(["path", "reason"], ((files[i].rel, r) for i, r in result.skipped))
        )
    ctx.metrics(metrics)


task: TaskPlugin[PredictParams] = TaskPlugin(
    name="predict",
    summary="Predict classes of images with a fine-tuned job:ID model (or any classifier); accuracy if labelled.",
    params=PredictParams,
    run=run,
    check=check,
    memory=inference_memory,
    headline="accuracy",
)
