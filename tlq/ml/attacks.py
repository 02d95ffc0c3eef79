"""Adversarial attacks in [0, 1] pixel space, with the model's normalization inside the wrapped model.

``gd`` is the lesson's unconstrained gradient descent; ``fgsm`` and ``pgd`` stay within ``eps`` (L-inf or L2).
Each attack also keeps, per image, the latest iterate whose 8-bit quantized version succeeds, so the PNG a
user saves still fools the model; both the float and the 8-bit outcomes are reported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


class PixelModel(nn.Module):
    """``model`` fed [0, 1] RGB pixels: normalization (mean, std) happens inside."""

    def __init__(self, model: nn.Module, mean, std) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def pixel_transform(data_config: dict):
    """The model's evaluation transform (resize, crop, to tensor) without its normalization."""
    import timm.data
    from torchvision import transforms

    full = timm.data.create_transform(**data_config, is_training=False)
    steps = [t for t in getattr(full, "transforms", [full]) if type(t).__name__ != "Normalize"]
    return transforms.Compose(steps)


def quantize(pixels: torch.Tensor) -> torch.Tensor:
    """What an 8-bit PNG keeps of an image."""
    return torch.round(pixels.clamp(0, 1) * 255) / 255


def quantize_within(adv: torch.Tensor, clean: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """8-bit pixels close to ``adv`` that stay inside the eps ball around ``clean`` (itself on the 8-bit grid)."""
    q = quantize(adv)
    if eps is None:
        return q
    if norm == "linf" and abs(eps * 255 - round(eps * 255)) < 1e-6:
        # eps is a whole number of 8-bit levels and ``adv`` lies inside the ball: rounding cannot leave it.
        return q
    if norm == "linf":
        bound = math.floor(eps * 255 + 1e-6) / 255
        return (clean + (q - clean).clamp(-bound, bound)).clamp(0, 1)
    too_far = (q - clean).flatten(1).norm(dim=1) > eps + 1e-9
    toward_clean = clean + torch.trunc((adv - clean) * 255) / 255  # rounding toward the clean image
    return torch.where(too_far.view(-1, 1, 1, 1), toward_clean.clamp(0, 1), q)


def project(adv: torch.Tensor, clean: torch.Tensor, eps: float | None, norm: str) -> torch.Tensor:
    """Back into the eps ball around ``clean`` and into [0, 1]."""
    if eps is None:
        return adv.clamp(0, 1)
    delta = adv - clean
    if norm == "linf":
        delta = delta.clamp(-eps, eps)
    else:
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12)
        delta = delta * (eps / norms).clamp(max=1.0).view(-1, 1, 1, 1)
    return (clean + delta).clamp(0, 1)


def _normalized(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "linf":
        return grad.sign()
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)


@dataclass
class AttackResult:
    adversarial: torch.Tensor  # the float pixels the attack accumulated
    quantized: torch.Tensor  # 8-bit pixels, what a PNG holds: the images to save and judge
    success_quantized: torch.Tensor  # bool per image, for ``quantized``
    predictions: torch.Tensor  # the model's class for each of ``quantized``
    success: torch.Tensor | None = None  # bool per image for ``adversarial``, when asked for (one more forward)


def succeeded(logits: torch.Tensor, labels: torch.Tensor, targeted: bool) -> torch.Tensor:
    predictions = logits.argmax(1)
    return predictions == labels if targeted else predictions != labels


def attack(
    model: nn.Module,
    clean: torch.Tensor,
    labels: torch.Tensor,
    method: str,
    targeted: bool,
    eps: float | None,
    steps: int,
    step_size: float,
    norm: str = "linf",
    random_start: bool = True,
    generator: torch.Generator | None = None,
    on_step=None,
    float_outcome: bool = False,
) -> AttackResult:
    """Runs one attack on a batch.

    The model always sees 8-bit images: each step takes the gradient at the quantized iterate and adds the
    step to a float accumulator (a straight-through estimate). So every forward pass also says whether the
    image a PNG would hold already succeeds, at no extra cost, and the latest such image is kept.

    Args:
        model: Takes [0, 1] pixels (see PixelModel); in eval mode.
        labels: Target classes when ``targeted``, else the true classes.
        eps: Perturbation bound for fgsm and pgd; None for gd (unconstrained).
        step_size: gd's learning rate, or pgd's step (in pixel units, along the sign or the unit gradient).
        float_outcome: Also judge the float accumulator (one more forward pass).
    """
    bound = None if method == "gd" else eps
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    adv = clean.clone()
    if method == "pgd" and random_start and bound is not None:
        noise = torch.empty_like(clean)
        if norm == "linf":
            noise.uniform_(-bound, bound, generator=generator)
        else:
            noise.normal_(generator=generator)
            radius = torch.rand(clean.shape[0], generator=generator).view(-1, 1, 1, 1) * bound
            noise = noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * radius
        adv = project(clean + noise, clean, bound, norm)
    if method == "fgsm":
        steps, step_size = 1, bound
    best = quantize_within(adv, clean, bound, norm)
    best_ok = torch.zeros(len(clean), dtype=torch.bool)
    best_pred = torch.zeros(len(clean), dtype=torch.long)
    direction = -1.0 if targeted else 1.0  # towards the target, or away from the true class
    for step in range(1, steps + 1):
        image = quantize_within(adv, clean, bound, norm).requires_grad_(True)
        logits = model(image).float()
        with torch.no_grad():  # the forward pass also judges the image the previous step produced
            now = succeeded(logits, labels, targeted)
            best[now] = image.detach()[now]
            best_pred[now] = logits.argmax(1)[now].cpu()
            best_ok |= now.cpu()
        (grad,) = torch.autograd.grad(loss_fn(logits, labels), image)
        with torch.no_grad():
            if method == "gd":
                adv = (adv + direction * step_size * grad).clamp(0, 1)
            else:
                adv = project(adv + direction * step_size * _normalized(grad, norm), clean, bound, norm)
        if on_step is not None:
            on_step(step, steps)
    with torch.no_grad():
        final = quantize_within(adv, clean, bound, norm)
        logits = model(final).float()
        final_ok = succeeded(logits, labels, targeted).cpu()
        # The final image where it succeeds (or nothing did), else the latest one that did.
        use_best = (~final_ok & best_ok).to(clean.device)
        quantized = torch.where(use_best.view(-1, 1, 1, 1), best, final)
        predictions = torch.where(use_best.cpu(), best_pred, logits.argmax(1).cpu())
        success = succeeded(model(adv).float(), labels, targeted).cpu() if float_outcome else None
    return AttackResult(adv.detach(), quantized, final_ok | best_ok, predictions, success)


def perturbation_sizes(adv: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(L-inf, L2) of each image's perturbation, in [0, 1] pixel units."""
    delta = (adv - clean).flatten(1)
    return delta.abs().amax(dim=1), delta.norm(dim=1)
