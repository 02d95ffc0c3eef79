"""ideal-image: the image a network holds for a class, by gradient descent on noise.

The lesson's method is the default: start from random noise in the model's input space and descend on
``ce_weight * cross-entropy(target) + tv_weight * total-variation(x)`` for 1000 steps at lr 1. Each step keeps
the image real: its pixels are the sigmoid of the optimized values, so the saved PNG is what the model saw
(``target_prob_png``). Where 1000 steps leave the PNG below ``min_prob`` (0.9), the descent goes on, up to
``max_steps``, so that the default image convinces the model whatever the model.

The feature-visualization tricks (tlq/ml/feature_vis.py: Fourier, coarse-grid and grey parameterizations, random
shifts, zooms and turns, a data prior) and the class-score objective with a dark-background decay are off by
default. With ``--prior`` (real images, e.g. the training data) the image is a blend of their principal
components: an independent judge read 9 of 10 of a digits model's ideal images (bench/ideal_digits.py); the
``readable`` preset, the best setting without data, fewer than half.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tlq.env import Environment
from tlq.ml.classes import backbone_class_names, resolve_class
from tlq.plugins.context import JobContext
from tlq.plugins.params import DataDir, Number, Precision
from tlq.plugins.task import TaskParams, TaskPlugin

# Option sets by name; options given with a preset win over it. `readable`: the setting under which an independent
# judge recognized the most digits in the ideal images of a digits model (bench/ideal_digits.py; README).
PRESETS: dict[str, dict] = {
    "lesson": {},
    "readable": {"grey": True, "param_size": 8, "objective": "logit", "decay": 0.01},
}


class IdealImageParams(TaskParams):
    target: str = Field(description="Class name (e.g. 'Siamese cat') or index; `tlq backbones` names models.")
    steps: int = Field(1000, ge=1, le=100_000, description="Gradient steps.")
    min_prob: Number = Field(
        0.9, ge=0, le=1, description="Past --steps, go on until the saved PNG's target probability reaches this."
    )
    max_steps: int | None = Field(None, ge=1, le=400_000, description="Step budget for --min-prob (default 4 x steps).")
    lr: Number = Field(1.0, gt=0, le=1e4, description="Step size of the descent.")
    ce_weight: Number = Field(10.0, ge=0, le=1e6, description="Weight of the --objective (cross-entropy, or logit).")
    tv_weight: Number = Field(0.005, ge=0, le=1e6, description="Weight of the total variation (0: plain noise).")
    size: int | None = Field(None, ge=8, le=2048, description="Image size (default: the model's input size).")
    seed: int = Field(0, ge=0, le=2**31, description="Seed of the starting noise.")
    snapshots: int = Field(8, ge=0, le=64, description="Images along the way shown in snapshots.png.")
    jitter: int = Field(0, ge=0, le=64, description="Random shifts of up to this many pixels each step.")
    param: Literal["pixel", "fft"] = Field("pixel", description="Optimize pixels, or a Fourier spectrum.")
    param_size: int | None = Field(None, ge=2, le=2048, description="Optimize a grid this coarse, upsampled.")
    objective: Literal["ce", "logit"] = Field(
        "ce", description="ce: cross-entropy towards the target; logit: raise the target's logit alone."
    )
    decay: Number = Field(0.0, ge=0, le=1e6, description="Weight of the sum of squared pixels (a dark background).")
    copies: int = Field(1, ge=1, le=64, description="Randomly transformed copies seen per step.")
    grey: bool = Field(False, description="One grey channel (for models trained on grey images).")
    scale: Number = Field(0.0, ge=0, lt=1, description="Random zooms by up to this share each step.")
    rotate: Number = Field(0.0, ge=0, le=180, description="Random turns by up to this many degrees each step.")
    prior: DataDir | None = Field(
        None, description="Folder of real images (e.g. the training data): stay in the span of their main components."
    )
    prior_components: int = Field(20, ge=1, le=500, description="Principal components of --prior that span the image.")
    prior_weight: Number = Field(0.1, ge=0, le=1e6, description="Weight of the Gaussian penalty of --prior.")
    precision: Precision = Field("fp32", description="fp32, or bf16 / auto for speed.")
    preset: Literal["lesson", "readable"] = Field(
        "lesson", description="lesson: plain descent; readable: the tricks under which a judge read most digits."
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            preset = PRESETS[data["preset"]]
            if data.get("prior") is not None:  # the prior replaces the preset's grid, as an option typed would
                preset = {k: v for k, v in preset.items() if k not in ("param", "param_size")}
            return {**preset, **data}
        return data

    @model_validator(mode="after")
    def _prior_replaces_the_parameterization(self):
        if self.prior is not None and (self.param != "pixel" or self.param_size is not None):
            raise ValueError(
                "--prior replaces --param fft and --param-size (the image is made of its components); drop one"
            )
        return self

    @model_validator(mode="after")
    def _budget(self):
        if self.max_steps is not None and self.max_steps < self.steps:
            # Else --steps would silently win over the budget asked for.
            raise ValueError(
                f"--max-steps ({self.max_steps}) is below --steps ({self.steps}); raise it, or lower --steps"
            )
        return self


def check(params: IdealImageParams, env: Environment, backbone=None) -> None:
    resolve_class(params.target, backbone_class_names(backbone, env), None)


def run(ctx: JobContext, params: IdealImageParams) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from tlq.ml.calibration import Workload, resolve_precision
    from tlq.ml.feature_vis import ImageParam, ImagePrior, load_prior_images, random_transform, total_variation
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
    # The image stays a real one: pixels are the sigmoid of the optimized values, always inside [0, 1], so the
    # saved PNG is what the model saw.
    prior = None
    if params.prior is not None:
        real = load_prior_images(params.prior, size, params.grey)
        prior = ImagePrior(real, params.prior_components, generator)
        k = len(prior.variable)
        ctx.log.info("prior: %d images from %s at %d px, %d components", len(real), params.prior, real.shape[-1], k)
        if k < params.prior_components:
            ctx.log.warning("--prior-components %d: %d images span at most %d", params.prior_components, len(real), k)
    image = ImageParam(params.param, size, generator, params.param_size, params.grey, prior)
    variable = image.variable

    def pixels_of():
        return image.pixels()

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

    def logits_of(pixels):
        with torch.no_grad(), autocast(ctx.device, precision):
            return model(normalize(pixels)).float()

    def measure(pixels):
        return torch.softmax(logits_of(pixels), 1)[0]

    def loss_of(logits, pixels):
        """The descended objective, and the total variation in it."""
        if params.objective == "logit":
            # The class score alone (Simonyan et al., 2013): cross-entropy also pushes away from every other class,
            # which is satisfied by what tells classes apart rather than by what makes one.
            fit = -logits[:, target].mean()
        else:
            fit = torch.nn.functional.cross_entropy(logits, labels.expand(len(logits)))
        tv = total_variation(normalize(pixels))[0]
        penalty = params.decay * pixels.pow(2).sum() + params.prior_weight * image.penalty()
        return params.ce_weight * fit + params.tv_weight * tv + penalty, tv

    budget = max(params.max_steps or 4 * params.steps, params.steps)
    ctx.log.info("ideal image of class %d (%s) on %s, %d steps", target, names[target], backbone.arch, params.steps)
    step = 0
    while True:
        pixels = pixels_of()
        if step in snapshot_steps:
            snapshots.append((step, to_numpy(pixels)))
        # --min-prob: past --steps, go on (up to the budget) until the image as an 8-bit PNG convinces the model.
        if step >= params.steps and (
            step >= budget
            or (step - params.steps) % every == 0
            and measure(torch.round(pixels.detach() * 255) / 255)[target] >= params.min_prob
        ):
            break
        seen = torch.cat(
            [
                normalize(random_transform(pixels, generator, params.jitter, params.scale, params.rotate))
                for _ in range(params.copies)
            ]
        )
        with autocast(ctx.device, precision):
            logits = model(seen).float()
        loss, tv = loss_of(logits, pixels)
        (grad,) = torch.autograd.grad(loss, variable)
        image.step(grad, params.lr)
        if step % every == 0:
            prob = torch.softmax(logits.detach(), 1)[:, target].mean().item()
            ctx.metrics({"loss": loss.item(), "target_prob": prob, "tv": tv.item()}, step=step)
        step += 1
        ctx.progress(step, max(params.steps, step), "descending")
    if params.snapshots and snapshots[-1][0] != step:
        snapshots.append((step, to_numpy(pixels)))

    final = pixels_of().detach()
    final_logits = logits_of(final)
    probs = torch.softmax(final_logits, 1)[0]
    final_loss, final_tv = loss_of(final_logits, final)
    ctx.metrics({"loss": final_loss.item(), "target_prob": probs[target].item(), "tv": final_tv.item()}, step=step)
    png = (to_numpy(final) * 255).round().astype(np.uint8)
    with ctx.artifacts.target("image", "ideal.png") as tmp:
        Image.fromarray(png).save(tmp, format="PNG")
    reloaded = torch.from_numpy(np.array(Image.open(ctx.artifacts.path("ideal.png")), dtype=np.float32) / 255)
    png_probs = measure(reloaded.permute(2, 0, 1)[None])
    ctx.metrics({"target_prob_png": png_probs[target].item(), "target_class": target, "steps_taken": step})

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
