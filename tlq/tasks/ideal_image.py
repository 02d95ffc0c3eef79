"""ideal-image: the image a network holds for a class, by gradient descent on noise.

The lesson's method is the default: start from random noise in the model's input space and descend on
``ce_weight * cross-entropy(target) + tv_weight * total-variation(x)`` for 1000 steps at lr 1. Each step keeps
the image real: its pixels are the sigmoid of the optimized values, so the saved PNG is what the model saw
(``target_prob_png``).
Jitter and a Fourier parameterization (the tricks feature-visualization libraries use) are off by default.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tlq.env import Environment
from tlq.ml.classes import backbone_class_names, resolve_class
from tlq.plugins.context import JobContext
from tlq.plugins.params import Number, Precision
from tlq.plugins.task import TaskParams, TaskPlugin


class IdealImageParams(TaskParams):
    target: str = Field(description="Class name (e.g. 'Siamese cat') or index; `tlq backbones` names models.")
    steps: int = Field(1000, ge=1, le=100_000, description="Gradient steps.")
    lr: Number = Field(1.0, gt=0, le=1e4, description="Step size of the descent.")
    ce_weight: Number = Field(10.0, ge=0, le=1e6, description="Weight of the cross-entropy towards the target.")
    tv_weight: Number = Field(0.005, ge=0, le=1e6, description="Weight of the total variation (0: plain noise).")
    size: int | None = Field(None, ge=8, le=2048, description="Image size (default: the model's input size).")
    seed: int = Field(0, ge=0, le=2**31, description="Seed of the starting noise.")
    snapshots: int = Field(8, ge=0, le=64, description="Images along the way shown in snapshots.png.")
    jitter: int = Field(0, ge=0, le=64, description="Random shifts of up to this many pixels each step.")
    param: Literal["pixel", "fft"] = Field("pixel", description="Optimize pixels, or a Fourier spectrum.")
    precision: Precision = Field("fp32", description="fp32, or bf16 / auto for speed.")


def check(params: IdealImageParams, env: Environment, backbone=None) -> None:
    resolve_class(params.target, backbone_class_names(backbone, env), None)


def total_variation(x):
    """Sum of absolute differences between neighbouring pixels, per image (as tf.image.total_variation)."""
    return (x[:, :, 1:, :] - x[:, :, :-1, :]).abs().flatten(1).sum(1) + (
        x[:, :, :, 1:] - x[:, :, :, :-1]
    ).abs().flatten(1).sum(1)


class _Spectrum:
    """An image as a scaled Fourier spectrum: low frequencies move first, which favours natural images."""

    def __init__(self, shape, generator, decay: float = 1.0) -> None:
        import torch

        _, c, h, w = shape
        fy = torch.fft.fftfreq(h)[:, None]
        fx = torch.fft.rfftfreq(w)[None, :]
        freq = torch.sqrt(fx**2 + fy**2).clamp_min(1.0 / max(h, w))
        self.scale = (1.0 / freq**decay) * (h * w) ** 0.5 / 640
        self.shape = (h, w)
        self.coeffs = (torch.randn(1, c, h, w // 2 + 1, 2, generator=generator) * 0.01).requires_grad_(True)

    def image(self):
        import torch

        spectrum = torch.view_as_complex(self.coeffs) * self.scale
        return torch.fft.irfft2(spectrum, s=self.shape, norm="ortho")

    @property
    def variable(self):
        return self.coeffs


def run(ctx: JobContext, params: IdealImageParams) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.precision import autocast, prepare_model
    from tlq.ml.reports import pyplot

    backbone = ctx.load_backbone(num_classes=None)
    model = backbone.model.eval().to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(False)
    names = backbone.class_names or [str(i) for i in range(model.num_classes)]
    target = resolve_class(params.target, backbone.class_names, model.num_classes)
    size = params.size or backbone.data_config["input_size"][-1]
    workload = Workload("input-gradient", model, (3, size, size), 1, backbone.arch, images=params.steps)
    precision = resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home, ctx.log)
    model = prepare_model(model, ctx.device, precision)
    mean = torch.tensor(backbone.data_config["mean"]).view(1, 3, 1, 1).to(ctx.device)
    std = torch.tensor(backbone.data_config["std"]).view(1, 3, 1, 1).to(ctx.device)
    generator = torch.Generator().manual_seed(params.seed)
    shape = (1, 3, size, size)
    # The image stays a real one: pixels are the sigmoid of the optimized values, always inside [0, 1], so the
    # saved PNG is what the model saw.
    if params.param == "fft":
        spectrum = _Spectrum(shape, generator)
        variable, raw = spectrum.variable, spectrum.image
    else:
        variable = torch.randn(shape, generator=generator).requires_grad_(True)

        def raw():
            return variable

    def pixels_of():
        return torch.sigmoid(raw())

    def normalize(pixels):
        return (pixels.to(ctx.device) - mean) / std

    labels = torch.tensor([target], device=ctx.device)
    every = max(1, params.steps // 50)
    snapshot_steps = (
        set(np.linspace(0, params.steps, params.snapshots, dtype=int).tolist()) if params.snapshots else set()
    )
    snapshots: list[tuple[int, np.ndarray]] = []

    def to_numpy(pixels):
        return pixels.detach().cpu()[0].permute(1, 2, 0).numpy()

    def measure(pixels):
        with torch.no_grad(), autocast(ctx.device, precision):
            logits = model(normalize(pixels)).float()
        return torch.softmax(logits, 1)[0]

    ctx.log.info("ideal image of class %d (%s) on %s, %d steps", target, names[target], backbone.arch, params.steps)
    for step in range(params.steps + 1):
        pixels = pixels_of()
        if step in snapshot_steps:
            snapshots.append((step, to_numpy(pixels)))
        if step == params.steps:
            break
        x = normalize(pixels)
        shifted = x
        if params.jitter:
            dy, dx = torch.randint(-params.jitter, params.jitter + 1, (2,), generator=generator).tolist()
            shifted = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        with autocast(ctx.device, precision):
            logits = model(shifted.to(ctx.device)).float()
        ce = torch.nn.functional.cross_entropy(logits, labels)
        tv = total_variation(x)[0]
        loss = params.ce_weight * ce + params.tv_weight * tv
        (grad,) = torch.autograd.grad(loss, variable)
        with torch.no_grad():
            if params.param == "fft":
                # Spectrum gradients vary in size from model to model by orders of magnitude; steps of a fixed
                # size along the normalized gradient (lr x 0.01 RMS per coefficient) were stable on every
                # model tried, where plain steps either saturated the image or barely moved it.
                variable -= params.lr * 0.01 * grad / grad.pow(2).mean().sqrt().clamp_min(1e-12)
            else:
                variable -= params.lr * grad
        if step % every == 0:
            prob = torch.softmax(logits.detach(), 1)[0, target].item()
            ctx.metrics({"loss": loss.item(), "target_prob": prob, "tv": tv.item()}, step=step)
        ctx.progress(step + 1, params.steps, "descending")

    final = pixels_of().detach()
    probs = measure(final)
    final_tv = total_variation(normalize(final))[0].item()
    final_ce = -torch.log(probs[target].clamp_min(1e-12)).item()
    ctx.metrics(
        {
            "loss": params.ce_weight * final_ce + params.tv_weight * final_tv,
            "target_prob": probs[target].item(),
            "tv": final_tv,
        },
        step=params.steps,
    )
    png = (to_numpy(final) * 255).round().astype(np.uint8)
    with ctx.artifacts.target("image", "ideal.png") as tmp:
        Image.fromarray(png).save(tmp, format="PNG")
    reloaded = torch.from_numpy(np.array(Image.open(ctx.artifacts.path("ideal.png")), dtype=np.float32) / 255)
    png_probs = measure(reloaded.permute(2, 0, 1)[None])
    ctx.metrics({"target_prob_png": png_probs[target].item(), "target_class": target})

    plt = pyplot()
    if snapshots:
        cols = min(len(snapshots), 4)
        rows = -(-len(snapshots) // cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3.5 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for ax, (step, image) in zip(axes.flat, snapshots, strict=False):
            ax.imshow(image)
            ax.set_title(f"step {step}", fontsize=9)
        fig.suptitle(f"ideal image of '{names[target]}' ({backbone.arch})")
        fig.tight_layout()
        ctx.artifacts.save_figure("snapshots", "snapshots.png", fig)
    top = torch.topk(probs, k=min(10, len(probs)))
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(top.indices) + 1.2))
    labels_text = [names[i][:40] for i in top.indices.tolist()]
    ax.barh(
        range(len(labels_text))[::-1],
        top.values.cpu().numpy(),
        color=["tab:orange" if i == target else "tab:blue" for i in top.indices.tolist()],
    )
    ax.set_yticks(range(len(labels_text))[::-1], labels=labels_text)
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    ax.set_title(f"top classes of the ideal image of '{names[target]}'")
    fig.tight_layout()
    ctx.artifacts.save_figure("top_classes", "top_classes.png", fig)


task: TaskPlugin[IdealImageParams] = TaskPlugin(
    name="ideal-image",
    summary="Render the 'ideal image' a network holds for a class (gradient descent on noise with a TV term).",
    params=IdealImageParams,
    run=run,
    check=check,
    headline="target_prob",
)
