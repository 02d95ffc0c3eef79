"""feature-maps: the channels one layer of a backbone extracts from an image (the lesson's VGG-16 on a cat photo).

Artifacts: ``feature_maps.png`` (the image as the model saw it, beside the ``--top`` channels of highest mean
activation, each titled with its channel index), ``channels.csv`` (channel, mean, max, positive_share, rank; best
first) and ``layers.json`` (every layer ``--layer`` can name, with its channels and reduction, the chosen one
marked). Metrics: ``active_channels`` (the headline: the share of channels that fire anywhere on the image),
``channels``, ``height``, ``width``, ``layer_index``, ``mean_activation``, ``top_channel``, ``top_mean``.
"""

from __future__ import annotations

import json

from pydantic import Field

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.feature_maps import backbone_layers, resolve_layer
from tlq.ml.images import UnreadableImage, load_rgb
from tlq.ml.reports import csv_text, pyplot
from tlq.plugins.context import JobContext
from tlq.plugins.params import ImageFile
from tlq.plugins.task import TaskParams, TaskPlugin

DEFAULT_LAYER = "-1"  # the last stage: the deepest maps the backbone's features_only form gives


class FeatureMapsParams(TaskParams):
    image: ImageFile = Field(description="The image to look at (PNG, JPEG, ...).")
    layer: str = Field(
        DEFAULT_LAYER,
        description="A layer name (layer3, features.22) or index, negative from the end; default: the last stage. "
        "`tlq layers BACKBONE` lists them.",
    )
    top: int = Field(16, ge=1, le=256, description="Channels drawn: those of highest mean activation.")


def unreadable(params: FeatureMapsParams, exc: UnreadableImage) -> BadInput:
    fix = (
        "shrink it (the model sees it at its input size anyway)" if "pixels" in str(exc) else "pass a PNG or JPEG image"
    )
    return BadInput(f"--image {params.image} cannot be read: {exc}; {fix}")


def check(params: FeatureMapsParams, env: Environment, backbone=None) -> None:
    try:
        load_rgb(params.image)
    except UnreadableImage as exc:
        raise unreadable(params, exc) from exc
    if backbone is None or params.layer.strip() == DEFAULT_LAYER:
        # Every model with feature layers has a last one; the check below imports timm and torch, which took a
        # submit from 1.5 s to 9 s here, so only a layer the user chose pays for it.
        return
    found = backbone_layers(backbone, env)
    if found is not None:  # else the job tells, once it has loaded the model
        resolve_layer(params.layer, found[1], backbone.name)


def run(ctx: JobContext, params: FeatureMapsParams) -> None:
    import numpy as np
    import torch

    from tlq.ml.attacks import pixel_transform
    from tlq.ml.feature_maps import channel_stats, feature_layers, layer_maps, maps_figure

    backbone = ctx.load_backbone(num_classes=None)
    model = backbone.model.eval().to(ctx.device)
    layers = feature_layers(model, backbone.arch)
    layer = resolve_layer(params.layer, layers, ctx.backbone.name)
    try:
        pixels = pixel_transform(backbone.data_config)(load_rgb(params.image))
    except UnreadableImage as exc:
        raise unreadable(params, exc) from exc
    mean, std = (torch.tensor(backbone.data_config[k]).view(3, 1, 1) for k in ("mean", "std"))
    ctx.log.info("feature maps of %s at %s (%d channels)", backbone.arch, layer.name, layer.channels)
    maps = layer_maps(model, ((pixels - mean) / std)[None].to(ctx.device), layer, backbone.arch)
    ctx.progress(1, 2, "feature maps")
    stats = channel_stats(maps)
    ranks = stats.ranks
    rows = (
        (int(c), f"{stats.mean[c]:.6g}", f"{stats.max[c]:.6g}", f"{stats.positive_share[c]:.6g}", int(ranks[c]))
        for c in stats.order
    )
    ctx.artifacts.write_text(
        "channels", "channels.csv", csv_text(["channel", "mean", "max", "positive_share", "rank"], rows)
    )
    listing = {
        "backbone": ctx.backbone.name,
        "arch": backbone.arch,
        "input_size": list(pixels.shape),
        "chosen": layer.as_dict() | {"height": maps.shape[1], "width": maps.shape[2]},
        "layers": [entry.as_dict() for entry in layers],
    }
    ctx.artifacts.write_text("layers", "layers.json", json.dumps(listing, indent=2))
    shown = [int(c) for c in stats.order[: params.top]]
    image = pixels.permute(1, 2, 0).clamp(0, 1).numpy()
    title = f"{backbone.arch} {layer.name} (index {layer.index}): top {len(shown)} of {layer.channels} channels"
    fig, metadata = maps_figure(image, maps, shown, title)
    try:  # dpi 100 draws the composed grid at 1:1 (maps_figure)
        with ctx.artifacts.target("feature_maps", "feature_maps.png") as tmp:
            fig.savefig(tmp, format="png", dpi=100, metadata=metadata)
    finally:
        pyplot().close(fig)
    ctx.metrics(
        {
            "active_channels": stats.active_share,
            "channels": layer.channels,
            "height": maps.shape[1],
            "width": maps.shape[2],
            "layer_index": layer.index,
            "mean_activation": float(np.mean(stats.mean)),
            "top_channel": shown[0],
            "top_mean": float(stats.mean[shown[0]]),
        }
    )
    ctx.progress(2, 2, "feature maps")


task: TaskPlugin[FeatureMapsParams] = TaskPlugin(
    name="feature-maps",
    summary="The strongest channels one layer of a backbone extracts from an image, as a grid, with statistics.",
    params=FeatureMapsParams,
    run=run,
    check=check,
    headline="active_channels",
)
