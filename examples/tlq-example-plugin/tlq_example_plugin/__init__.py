"""pixel-stats: per-channel mean and standard deviation of the images under a folder.

A complete tlq task in one file: a parameter model, a run function and the TaskPlugin that the
``tlq.tasks`` entry point in this package's pyproject.toml names.
"""

from __future__ import annotations

import json

from pydantic import Field

from tlq.ml.images import UnreadableImage, discover_files, load_rgb
from tlq.plugins import BadInput, TaskParams, TaskPlugin
from tlq.plugins.context import JobContext
from tlq.plugins.params import DataDir


class PixelStatsParams(TaskParams):
    data: DataDir = Field(description="Folder of images.")
    max_images: int = Field(1000, ge=1, description="Read at most this many images.")


def run(ctx: JobContext, params: PixelStatsParams) -> None:
    import numpy as np

    files = discover_files(params.data)[: params.max_images]
    total = np.zeros(3)
    total_sq = np.zeros(3)
    pixels = 0
    read = 0
    for i, file in enumerate(files):
        try:
            array = np.asarray(load_rgb(file.path), dtype=np.float64) / 255.0
        except UnreadableImage:
            continue
        flat = array.reshape(-1, 3)
        total += flat.sum(0)
        total_sq += (flat**2).sum(0)
        pixels += flat.shape[0]
        read += 1
        ctx.progress(i + 1, len(files), "reading images")
    if not read:
        raise BadInput(f"no readable images under {params.data}; point --data at a folder of images")
    mean = total / pixels
    std = np.sqrt(np.maximum(total_sq / pixels - mean**2, 0))
    stats = {f"mean_{c}": float(m) for c, m in zip("rgb", mean, strict=True)} | {
        f"std_{c}": float(s) for c, s in zip("rgb", std, strict=True)
    }
    # contrast: the mean of the channels' standard deviations, the task's headline (how varied the images are)
    ctx.metrics(stats | {"images": read, "contrast": float(std.mean())})
    ctx.artifacts.write_text("stats", "stats.json", json.dumps(stats, indent=2))


task: TaskPlugin[PixelStatsParams] = TaskPlugin(
    name="pixel-stats",
    summary="Per-channel mean and std of the images under a folder (example third-party plugin).",
    params=PixelStatsParams,
    run=run,
    needs_backbone=False,
    headline="contrast",  # `tlq compare` and sweeps rank pixel-stats jobs by it, higher first
)
