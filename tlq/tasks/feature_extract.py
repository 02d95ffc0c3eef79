"""feature-extract: the pooled pre-logits features of every image under a folder, with an index.

Artifacts: ``features.npy`` (float32, one row per readable image), ``index.csv`` (row, path, label) and, when
files were skipped, ``skipped.csv`` (path, reason). Metrics: images, skipped, images_per_second,
data_wait_share (the share of the time the model waited for decoded images) and compiled (1 where the compiled
forward ran the job's full batches; where a compile ran, compile_seconds, images_per_second_after_compile
and compile_speedup).
"""

from __future__ import annotations

from pydantic import Field

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.images import discover_files
from tlq.ml.memory import inference_memory

# Every CSV tlq writes goes through one writer that neutralizes formula cells; the tasks import it from here.
from tlq.ml.reports import csv_text
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, Compile, DataDir, Precision
from tlq.plugins.task import TaskParams, TaskPlugin


class FeatureExtractParams(TaskParams):
    data: DataDir = Field(description="Folder of images, searched recursively; class subfolders become labels.")
    batch_size: BatchSize | None = Field(
        None, description="Images per forward pass (default: 16 on a CPU, 64 on a GPU)."
    )
    precision: Precision = Field(
        "auto", description="auto: the fastest of fp32, fp32 in channels_last memory and bf16, measured here."
    )
    loader_workers: int | None = Field(
        None, ge=0, le=64, description="Image-decoding processes (default: sized to the machine)."
    )
    compile: Compile = Field(
        "auto",
        description="torch.compile the forward: auto on a CPU for a job long enough to pay the compile back, "
        "kept only where measured at least 5% faster.",
    )


def check(params: FeatureExtractParams, env: Environment, backbone=None) -> None:
    if not discover_files(params.data):
        raise BadInput(f"no files under {params.data}; point --data at a folder of images")


def run(ctx: JobContext, params: FeatureExtractParams) -> None:
    import timm.data

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.compiling import plan_job
    from tlq.ml.features import NpyWriter, inference_batch_size, pooled_features_of

    files = discover_files(params.data)
    if not files:
        raise BadInput(f"no files under {params.data}; point --data at a folder of images")
    backbone = ctx.load_backbone(num_classes=0)
    batch_size = inference_batch_size(params.batch_size, ctx.device)
    shape = tuple(backbone.data_config["input_size"])
    workload = Workload("inference", backbone.model, shape, batch_size, backbone.arch, images=len(files))
    precision = resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home, ctx.log)
    ctx.log.info("extracting %s features of %d files with %s (%s)", backbone.arch, len(files), precision, ctx.device)
    compile_plan = plan_job(params.compile, workload, ctx.device, precision, ctx.env.settings.home)
    ctx.log.info("compile %s: %s", "planned" if compile_plan.compile else "off", compile_plan.reason)
    transform = timm.data.create_transform(**backbone.data_config, is_training=False)
    # Rows stream into features.npy as they are computed: memory stays flat however many images there are.
    with ctx.artifacts.target("features", "features.npy") as tmp:
        writer = NpyWriter(tmp, len(files))
        try:
            result = pooled_features_of(
                ctx,
                backbone,
                files,
                transform,
                precision,
                batch_size,
                params.loader_workers,
                "extracting features",
                into=writer,
                compile_plan=compile_plan,
            )
        finally:
            writer.close()
        if not result.kept:
            examples = "; ".join(f"{files[i].rel}: {reason}" for i, reason in result.skipped[:3])
            raise BadInput(f"none of the {len(files)} files under {params.data} is a readable image ({examples})")
    ctx.artifacts.write_text(
        "index",
        "index.csv",
        csv_text(
            ["row", "path", "label"], ((row, files[i].rel, files[i].label or "") for row, i in enumerate(result.kept))
        ),
    )
    if result.skipped:
        ctx.artifacts.write_text(
            "skipped", "skipped.csv", csv_text(["path", "reason"], ((files[i].rel, r) for i, r in result.skipped))
        )
    ctx.metrics(
        {
            "images": len(result.kept),
            "skipped": len(result.skipped),
            "images_per_second": result.images_per_second,
            "data_wait_share": result.data_wait_share,
            "feature_dim": writer.width,
            "cached_images": result.cached,
            "compiled": 0.0,
            **result.compile_metrics,
        }
    )


task: TaskPlugin[FeatureExtractParams] = TaskPlugin(
    name="feature-extract",
    summary="Pooled pre-logits features of every image under a folder, saved as features.npy + index.csv.",
    params=FeatureExtractParams,
    run=run,
    check=check,
    memory=inference_memory,
    headline="images_per_second",
)
