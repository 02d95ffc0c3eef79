"""How much memory a job will take, estimated at submit from its model, batch, image size and loaders.

The model is built on PyTorch's ``meta`` device (shapes only, no memory, no weights) and run once on a meta
image; hooks add up the sizes of the activations. Training keeps every activation for the backward pass and
holds weights, gradients and AdamW's two moments; inference holds about the largest layer's input and
output at a time. The figures are estimates, meant to refuse what cannot fit (a batch of 512 VGG16 images on
a 16 GiB machine), not to pack jobs tightly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

GIB = 2**30
PROCESS_BASE = int(0.6 * GIB)  # Python, torch and timm loaded, before any model
LOADER_PROCESS = int(0.35 * GIB)  # one DataLoader worker process
AUTOGRAD_OVERHEAD = 1.5  # saved tensors beyond the module outputs (norm statistics, masks, ...)


@dataclass(frozen=True)
class ModelProfile:
    """A model's size at one input size: its parameters, and the activation elements one image makes."""

    arch: str
    parameters: int
    activations_total: int
    activations_peak: int


@dataclass(frozen=True)
class MemoryNeed:
    """A job's estimated memory: ``fixed`` bytes plus ``per_image`` bytes for each image of a batch."""

    fixed: int
    per_image: int
    batch_size: int
    what: str

    @property
    def total(self) -> int:
        return self.fixed + self.per_image * self.batch_size

    def largest_batch(self, budget: int) -> int:
        """The largest power-of-two batch that fits ``budget`` (0 when not even one image does)."""
        room = (budget - self.fixed) // max(1, self.per_image)
        batch = 1
        while batch * 2 <= room:
            batch *= 2
        return batch if room >= 1 else 0


@functools.lru_cache(maxsize=32)
def profile(arch: str, image_size: int | None = None, num_classes: int | None = None) -> ModelProfile | None:
    """The profile of timm architecture ``arch`` at ``image_size`` (default: its own); None when it cannot be
    built without downloading anything."""
    import timm
    import torch

    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        with torch.device("meta"):
            model = timm.create_model(arch, pretrained=False, **kwargs)
    except Exception:
        return None
    size = image_size or model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
    sizes: list[int] = []

    def count(_module, _inputs, output) -> None:
        if isinstance(output, torch.Tensor):
            sizes.append(output[0].numel())

    leaves = [m for m in model.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(torch.empty(1, 3, size, size, device="meta"))
    except Exception:
        return None
    finally:
        for hook in hooks:
            hook.remove()
    parameters = sum(p.numel() for p in model.parameters())
    return ModelProfile(arch, parameters, sum(sizes), max(sizes, default=0))


def backbone_profile(env, ref, image_size: int | None) -> tuple[ModelProfile, int] | None:
    """The profile of a job's backbone at the size the job runs it, and that size; None when unknown."""
    from tlq.plugins.backbone import provider_for

    if ref is None:
        return None
    described = provider_for(ref.name, env.backbones).architecture(ref, env)
    if described is None:
        return None
    arch, own_size, num_classes = described
    found = profile(arch, image_size or own_size, num_classes)
    if found is None:
        return None
    return found, image_size or own_size or found_size(arch)


def found_size(arch: str) -> int:
    import timm

    try:
        return int(timm.models.get_pretrained_cfg(arch).input_size[-1])
    except Exception:
        return 224


def bytes_per_value(precision: str) -> int:
    return 2 if precision in ("bf16", "fp16", "auto") else 4


def training_need(
    model: ModelProfile, batch_size: int, image_size: int, precision: str, loaders: int, train_backbone: bool
) -> MemoryNeed:
    """Training: weights (and, when the backbone trains, gradients and AdamW's moments) plus every activation."""
    weights = model.parameters * 4 * (4 if train_backbone else 1)
    per_image = int(model.activations_total * bytes_per_value(precision) * AUTOGRAD_OVERHEAD)
    per_image += _loader_bytes(image_size, loaders)
    fixed = PROCESS_BASE + weights + loaders * LOADER_PROCESS
    return MemoryNeed(fixed, per_image, batch_size, f"{model.arch} training, batch {batch_size} at {image_size} px")


def inference_need(model: ModelProfile, batch_size: int, image_size: int, precision: str, loaders: int) -> MemoryNeed:
    """Inference: weights plus the largest layer's input and output for each image."""
    per_image = 2 * model.activations_peak * bytes_per_value(precision) + _loader_bytes(image_size, loaders)
    fixed = PROCESS_BASE + model.parameters * 4 + loaders * LOADER_PROCESS
    return MemoryNeed(fixed, per_image, batch_size, f"{model.arch} inference, batch {batch_size} at {image_size} px")


def inference_memory(params, env, backbone) -> MemoryNeed | None:
    """The memory of a task that runs the backbone forward only (feature-extract, predict): its ``batch_size``
    (CPU default when unset), ``precision`` and ``loader_workers`` parameters, at the backbone's own size."""
    found = backbone_profile(env, backbone, None)
    if found is None:
        return None
    model, size = found
    batch = getattr(params, "batch_size", None) or 16
    return inference_need(model, batch, size, params.precision, getattr(params, "loader_workers", None) or 0)


def _loader_bytes(image_size: int, loaders: int) -> int:
    # Each decoded image as float32, in the batch being used and in each loader's two prefetched batches.
    return 3 * image_size * image_size * 4 * (1 + 2 * loaders)


def gib(value: int) -> str:
    return f"{value / GIB:.1f} GiB"
