"""Feature maps: what one layer of a backbone extracts from an image, channel by channel.

The layers one can choose are timm's ``feature_info`` (the stage outputs ``features_only=True`` returns: ``layer3``
of a ResNet, ``features.22`` of a VGG-16). A layer's maps come from the loaded model's ``forward_intermediates``,
whose indices follow ``feature_info`` in timm 1.0: it runs on the model the job already has (a fine-tuned
``job:ID`` too), where a second ``features_only`` model would need its weights loaded again, and it hands back a
ViT's tokens as NCHW maps.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from tlq.errors import BadInput

if TYPE_CHECKING:
    import numpy as np
    import torch

    from tlq.env import Environment
    from tlq.plugins.backbone import BackboneRef


@dataclass(frozen=True)
class Layer:
    """One choosable layer: its place in ``feature_info`` (``index``, and ``from_end``, the negative index), the
    module's name, its channels, and how many input pixels one map cell spans (``reduction``)."""

    index: int
    from_end: int
    name: str
    channels: int
    reduction: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def feature_layers(model, arch: str) -> list[Layer]:
    """The layers of a timm model, from its ``feature_info``.

    Raises:
        BadInput: The model has no ``feature_info`` or no ``forward_intermediates`` (not a timm model, or one
            whose family predates them).
    """
    info = getattr(model, "feature_info", None)
    if not info or not hasattr(model, "forward_intermediates"):
        raise BadInput(
            f"{arch} names no feature layers (timm's feature_info and forward_intermediates); "
            "use a timm CNN or ViT backbone such as resnet50 or vgg16"
        )
    dicts = info.get_dicts() if hasattr(info, "get_dicts") else list(info)
    n = len(dicts)
    return [Layer(i, i - n, str(d["module"]), int(d["num_chs"]), int(d["reduction"])) for i, d in enumerate(dicts)]


def backbone_layers(ref: BackboneRef, env: Environment, load: bool = False) -> tuple[str, list[Layer]] | None:
    """The layers of a backbone without its weights: its provider names the architecture, and timm builds it on
    the meta device (no memory, no download: 10 ms for VGG-16). A provider that cannot name it without loading
    (a Hub model not in the local cache) gives None, or, with ``load``, the model is loaded to read them.

    Returns:
        (architecture, layers), or None.
    """
    import timm
    import torch

    from tlq.plugins.backbone import provider_for

    provider = provider_for(ref.name, env.backbones)
    lookup = getattr(provider, "architecture", None)
    described = lookup(ref, env) if lookup is not None else None
    if described is None:
        if not load:
            return None
        loaded = provider.load(ref, env, None)
        return loaded.arch, feature_layers(loaded.model, loaded.arch)
    arch = described[0]
    with torch.device("meta"):
        model = timm.create_model(arch, pretrained=False)
    return arch, feature_layers(model, arch)


def resolve_layer(choice: str, layers: list[Layer], backbone: str) -> Layer:
    """The layer ``--layer`` names: a ``feature_info`` name (``layer3``, ``features.22``) or an index, negative
    ones counting from the end (``-1``, the last stage).

    Raises:
        BadInput: Neither; the message lists the names and the index range.
    """
    text = str(choice).strip()
    for layer in layers:
        if layer.name == text:
            return layer
    try:
        index = int(text)
    except ValueError:
        index = None
    if text.startswith("-") and index == 0:  # -0 is 0, the first layer, where "from the end" meant the last
        raise BadInput(f"--layer {text} is the first layer, 0; pass -1 for the last (`tlq layers {backbone}`)")
    if index is not None and -len(layers) <= index < len(layers):
        return layers[index]
    what = f"--layer {index} is out of range" if index is not None else f"unknown --layer {text!r}"
    raise BadInput(
        f"{what} for {backbone}; pass one of {', '.join(layer.name for layer in layers)} or an index from "
        f"{-len(layers)} to {len(layers) - 1} (`tlq layers {backbone}` lists their channels)"
    )


def layer_maps(model, x: torch.Tensor, layer: Layer, arch: str) -> torch.Tensor:
    """The maps of ``layer`` for a batch of one normalized image: a (channels, height, width) float tensor."""
    import torch

    with torch.no_grad():
        (maps,) = model.forward_intermediates(x, indices=[layer.index], intermediates_only=True, stop_early=True)
    if maps.ndim != 4 or maps.shape[1] != layer.channels:
        raise BadInput(
            f"{arch}'s forward_intermediates gave a {tuple(maps.shape)} output at {layer.name}, where feature_info "
            f"promises {layer.channels} channels; choose another --layer"
        )
    return maps[0].float().cpu()


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of one layer's maps, and the channels in rank order (highest mean first)."""

    mean: np.ndarray
    max: np.ndarray
    positive_share: np.ndarray
    order: np.ndarray

    @property
    def ranks(self) -> np.ndarray:
        import numpy as np

        ranks = np.empty(len(self.order), dtype=int)
        ranks[self.order] = np.arange(1, len(self.order) + 1)
        return ranks

    @property
    def active_share(self) -> float:
        """The share of channels that fire anywhere on the image (max above 0): after a ReLU the rest are dead
        for this image."""
        return float((self.max > 0).mean())


def channel_stats(maps: torch.Tensor) -> ChannelStats:
    """Mean, max and share of positive cells of each channel; ties in the mean keep channel order."""
    import numpy as np

    flat = maps.flatten(1).double().numpy()
    mean = flat.mean(1)
    return ChannelStats(mean, flat.max(1), (flat > 0).mean(1), np.argsort(-mean, kind="stable"))


TILE, GAP, LABEL, HEADER = 96, 8, 16, 28  # pixels of a channel's tile, between tiles, of its label, of the title


def maps_figure(image: np.ndarray, maps: torch.Tensor, channels: list[int], title: str):
    """The input image (as the model saw it, resized and cropped) beside a grid of the chosen channels' maps, each
    labelled with its channel index and drawn on its own colour scale (the pattern shows, whatever its size).

    The grid is composed as one picture and drawn in a single axes at 1:1 (saved at dpi 100): with a matplotlib
    axes per tile, drawing 16 tiles took 1.2 s of a 1.4 s job; composed, the whole job takes 0.4 s.

    Returns:
        The matplotlib figure and the PNG metadata (``tlq:tiles``, JSON: the layer's title and the channels in
        the order drawn) that lets scripts and tests read what the grid shows without looking at it.
    """
    import math

    import numpy as np
    from matplotlib import colormaps
    from PIL import Image

    from tlq.ml.reports import pyplot

    cols = math.ceil(math.sqrt(len(channels)))
    rows = math.ceil(len(channels) / cols)
    height = rows * (LABEL + TILE + GAP) - GAP
    side = height - LABEL  # the photo spans the grid's height
    left = side + 2 * GAP
    canvas = np.full((height, left + cols * (TILE + GAP) - GAP, 3), 255, dtype=np.uint8)
    photo = Image.fromarray((np.clip(image, 0, 1) * 255).round().astype(np.uint8))
    canvas[LABEL:, :side] = np.asarray(photo.resize((side, side), Image.Resampling.BILINEAR))
    viridis = colormaps["viridis"]
    labels = [(side / 2, 0, "input")]  # (x, top of the label strip, text)
    for k, channel in enumerate(channels):
        values = maps[channel].numpy()
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
        colours = Image.fromarray((viridis(scaled)[..., :3] * 255).round().astype(np.uint8))
        h, w = values.shape
        fit = TILE / max(h, w)  # nearest neighbour keeps every cell of a small map visible as a block
        colours = colours.resize((max(1, round(w * fit)), max(1, round(h * fit))), Image.Resampling.NEAREST)
        y = (k // cols) * (LABEL + TILE + GAP) + LABEL
        x = left + (k % cols) * (TILE + GAP)
        canvas[y : y + colours.height, x : x + colours.width] = np.asarray(colours)
        labels.append((x + TILE / 2, y - LABEL, f"ch {channel}"))
    plt = pyplot()
    # A margin of GAP around the canvas, wider where the title needs it (one tile of a layer).
    width, full = max(canvas.shape[1] + 2 * GAP, 8 * len(title)), height + HEADER + GAP
    fig = plt.figure(figsize=(width / 100, full / 100), dpi=100)
    ax = fig.add_axes(((width - canvas.shape[1]) / 2 / width, GAP / full, canvas.shape[1] / width, height / full))
    ax.imshow(canvas, interpolation="nearest", aspect="auto")
    ax.axis("off")
    for x, top, text in labels:
        ax.text(x, top + LABEL - 3, text, ha="center", va="bottom", fontsize=8)
    fig.suptitle(title, fontsize=10, y=1 - 6 / full, va="top")
    return fig, {"Title": title, "tlq:tiles": json.dumps({"title": title, "channels": list(channels)})}


def tiles_in_png(path) -> dict[str, Any]:
    """What a feature-maps PNG shows, read back from its ``tlq:tiles`` text chunk."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return json.loads(image.text.get("tlq:tiles", "{}"))
