"""adversarial: craft images that fool a network, and measure how small the change is.

``--image FILE`` attacks one photo (the lesson: a dog pushed to "Siamese cat"); ``--data DIR`` is a
robustness evaluation over labelled images, with a curve when ``--eps`` lists several bounds. Attacks run in
[0, 1] pixel space; the saved 8-bit PNG is checked to still fool the model, and both outcomes are reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, model_validator

from tlq.env import Environment
from tlq.errors import BadInput
from tlq.ml.classes import backbone_class_names, resolve_class
from tlq.ml.images import UnreadableImage, discover_files, load_rgb
from tlq.plugins.context import JobContext
from tlq.plugins.params import BatchSize, DataDir, ImageFile, Number, Precision, parse_number
from tlq.plugins.task import TaskParams, TaskPlugin

DEFAULT_STEPS = {"gd": 100, "fgsm": 1, "pgd": 10}


def _eps_list(value):
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list | tuple) else [value]
    bounds = []
    for item in items:
        eps = parse_number(item)
        if not isinstance(eps, int | float) or not 0 < eps <= 1:
            raise ValueError(f"eps {item!r} must be in (0, 1] on the pixel scale; write 8/255 for 8 levels of 255")
        bounds.append(float(eps))
    if not bounds:
        raise ValueError("give at least one eps, e.g. 8/255")
    return sorted(set(bounds))


EpsList = Annotated[list[float], BeforeValidator(_eps_list)]


class AdversarialParams(TaskParams):
    image: ImageFile | None = Field(None, description="One image to attack.")
    data: DataDir | None = Field(None, description="Folder of labelled images (class subfolders): a robustness run.")
    method: Literal["gd", "fgsm", "pgd"] = Field(
        "pgd", description="gd: the lesson's unbounded descent; fgsm, pgd: bounded by --eps."
    )
    target: str | None = Field(None, description="Class to push towards (name or index).")
    untargeted: bool = Field(False, description="Push away from the true class (the default without --target).")
    eps: EpsList = Field([8 / 255], description="Bound(s) in [0,1] pixels, e.g. 8/255 or 1/255,2/255,4/255,8/255.")
    steps: int | None = Field(None, ge=1, le=100_000, description="Steps (default: gd 100, fgsm 1, pgd 10).")
    step_size: Number | None = Field(
        None, gt=0, le=1e4, description="gd: learning rate (default 1); pgd: step (default 2.5 x eps / steps)."
    )
    norm: Literal["linf", "l2"] = Field("linf", description="Norm of the eps bound.")
    random_start: bool = Field(True, description="pgd starts from a random point in the eps ball.")
    batch_size: BatchSize = Field(32, description="Images attacked at once.")
    max_images: int | None = Field(None, ge=1, description="Attack at most this many images of --data.")
    precision: Precision = Field("fp32", description="fp32 (exact gradients), or bf16 / auto.")
    seed: int = Field(0, ge=0, le=2**31, description="Seed of the random start.")

    @model_validator(mode="after")
    def _consistent(self):
        if (self.image is None) == (self.data is None):
            raise ValueError("give exactly one of --image FILE or --data DIR")
        if self.target is not None and self.untargeted:
            raise ValueError("--target and --untargeted exclude each other")
        if self.image is not None and len(self.eps) > 1:
            raise ValueError("several --eps values make a robustness curve, which needs --data DIR")
        return self

    @property
    def n_steps(self) -> int:
        return self.steps or DEFAULT_STEPS[self.method]

    def step_for(self, eps: float) -> float:
        if self.step_size is not None:
            return self.step_size
        return 1.0 if self.method == "gd" else 2.5 * eps / self.n_steps


def check(params: AdversarialParams, env: Environment, backbone=None) -> None:
    if params.target is not None:
        resolve_class(params.target, backbone_class_names(backbone, env), None)
    if params.image is not None:
        try:
            load_rgb(params.image)
        except UnreadableImage as exc:
            raise BadInput(f"--image {params.image} cannot be attacked: {exc}; pass a PNG or JPEG image") from exc
    elif not discover_files(params.data):
        raise BadInput(f"no files under {params.data}; point --data at class folders of images")


def run(ctx: JobContext, params: AdversarialParams) -> None:
    import torch

    from tlq.ml.attacks import PixelModel, pixel_transform

    backbone = ctx.load_backbone(num_classes=None)
    model = backbone.model.eval().to(ctx.device)
    for p in model.parameters():
        p.requires_grad_(False)
    if params.precision != "fp32":
        from tlq.ml.calibration import Workload, resolve_precision
        from tlq.ml.precision import prepare_model

        shape = tuple(backbone.data_config["input_size"])
        batch = 1 if params.image is not None else params.batch_size
        images = params.n_steps if params.image is not None else None
        workload = Workload("input-gradient", model, shape, batch, backbone.arch, cast=True, images=images)
        precision = resolve_precision(params.precision, ctx.device, workload, ctx.env.settings.home, ctx.log)
        model = prepare_model(model, ctx.device, precision)
        if precision == "bf16":
            model = model.to(torch.bfloat16)
    wrapped = PixelModel(model, backbone.data_config["mean"], backbone.data_config["std"]).to(ctx.device)
    if params.precision != "fp32" and next(model.parameters()).dtype == torch.bfloat16:
        wrapped.mean, wrapped.std = wrapped.mean.to(torch.bfloat16), wrapped.std.to(torch.bfloat16)
    names = backbone.class_names or [str(i) for i in range(model.num_classes)]
    target = resolve_class(params.target, backbone.class_names, model.num_classes) if params.target else None
    transform = pixel_transform(backbone.data_config)
    if params.image is not None:
        attack_one(ctx, params, wrapped, names, target, transform)
    else:
        evaluate_folder(ctx, params, wrapped, names, target, transform)


def _top5(probs, names) -> list[dict]:
    import torch

    values, indices = torch.topk(probs, k=min(5, len(probs)))
    return [
        {"class": names[i], "index": i, "prob": round(v, 6)}
        for v, i in zip(values.tolist(), indices.tolist(), strict=True)
    ]


def attack_one(ctx, params: AdversarialParams, model, names, target, transform) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from tlq.ml.attacks import attack, perturbation_sizes
    from tlq.ml.reports import pyplot

    clean = transform(load_rgb(params.image))[None].to(next(model.buffers()).device)
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        before = torch.softmax(model(clean.to(dtype)).float(), 1)[0].cpu()
    original = int(before.argmax())
    targeted = target is not None
    labels = torch.tensor([target if targeted else original], device=clean.device)
    eps = params.eps[0]
    generator = torch.Generator().manual_seed(params.seed)
    result = attack(
        lambda x: model(x.to(dtype)),
        clean,
        labels,
        params.method,
        targeted,
        eps,
        params.n_steps,
        params.step_for(eps),
        params.norm,
        params.random_start,
        generator,
        on_step=lambda i, n: ctx.progress(i, n, f"{params.method} step"),
    )
    pixels = (result.quantized[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    with ctx.artifacts.target("adversarial", "adversarial.png") as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    saved = torch.from_numpy(np.array(Image.open(ctx.artifacts.path("adversarial.png")).convert("RGB")))
    saved = (saved.float() / 255).permute(2, 0, 1)[None].to(clean.device)
    with torch.no_grad():
        after_float = torch.softmax(model(result.adversarial.to(dtype)).float(), 1)[0].cpu()
        after_png = torch.softmax(model(saved.to(dtype)).float(), 1)[0].cpu()
    linf_f, l2_f = perturbation_sizes(result.adversarial, clean)
    linf, l2 = perturbation_sizes(saved, clean)

    def fooled(probs) -> bool:
        top = int(probs.argmax())
        return top == target if targeted else top != original

    delta = (saved - clean)[0].permute(1, 2, 0).cpu().numpy()
    scale = max(float(np.abs(delta).max()), 1e-12)
    amplified = ((delta / scale) * 0.5 + 0.5).clip(0, 1)
    with ctx.artifacts.target("perturbation", "perturbation.png") as tmp:
        Image.fromarray((amplified * 255).round().astype(np.uint8)).save(tmp, format="PNG")
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(11, 4))
    clean_np = clean[0].permute(1, 2, 0).cpu().numpy()
    panels = [
        (clean_np, f"original: {names[original][:28]}\np={before[original]:.3f}"),
        (
            amplified,
            f"perturbation, amplified x{0.5 / scale:.0f}\nL-inf {linf.item() * 255:.1f}/255, L2 {l2.item():.3f}",
        ),
        (pixels, f"adversarial (PNG): {names[int(after_png.argmax())][:28]}\np={after_png.max():.3f}"),
    ]
    for ax, (image, title) in zip(axes, panels, strict=True):
        ax.imshow(image)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.suptitle(f"{params.method} attack, {'target ' + names[target] if targeted else 'untargeted'}")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    ctx.artifacts.save_figure("comparison", "comparison.png", fig)
    summary = {
        "target": None if target is None else {"class": names[target], "index": target},
        "top5_before": _top5(before, names),
        "top5_after_float": _top5(after_float, names),
        "top5_after_png": _top5(after_png, names),
    }
    ctx.artifacts.write_text("predictions", "predictions.json", json.dumps(summary, indent=2))
    metrics = {
        "success": float(fooled(after_png)),
        "success_float": float(fooled(after_float)),
        "linf": linf.item(),
        "l2": l2.item(),
        "linf_float": linf_f.item(),
        "l2_float": l2_f.item(),
        "clean_prob": before[original].item(),
        "adv_top1_prob": after_png.max().item(),
    }
    if targeted:
        metrics["target_prob"] = after_png[target].item()
        metrics["target_prob_float"] = after_float[target].item()
    ctx.metrics(metrics)


def evaluate_folder(ctx, params: AdversarialParams, model, names, target, transform) -> None:
    import numpy as np
    import torch

    from tlq.ml.attacks import attack, perturbation_sizes
    from tlq.ml.features import image_loader
    from tlq.ml.reports import pyplot
    from tlq.tasks.feature_extract import csv_text

    files = discover_files(params.data)
    lookup = {}
    for index, name in enumerate(names):
        lookup.setdefault(name, index)
        lookup.setdefault(name.lower(), index)
    labelled = [f for f in files if f.label is not None and (f.label in lookup or f.label.lower() in lookup)]
    if not labelled:
        raise BadInput(
            f"no image under {params.data} sits in a folder named like a class of this model "
            f"(e.g. {names[0]!r}); a robustness run needs labelled images"
        )
    labelled = labelled[: params.max_images] if params.max_images else labelled
    truth = torch.tensor([lookup.get(f.label, lookup.get(f.label.lower())) for f in labelled])
    device = next(model.buffers()).device
    dtype = next(model.parameters()).dtype
    forward = lambda x: model(x.to(dtype))  # noqa: E731
    clean_batches, kept, skipped = [], [], []
    for images, indices, bad in image_loader(labelled, transform, params.batch_size):
        skipped.extend(bad)
        if images is not None:
            clean_batches.append((images, indices))
            kept.extend(indices)
    with torch.no_grad():
        clean_pred = torch.cat([forward(x.to(device)).float().argmax(1).cpu() for x, _ in clean_batches])
    y = truth[kept]
    correct = clean_pred == y
    eligible = correct & (clean_pred != target) if target is not None else correct
    ctx.metrics({"clean_acc": correct.float().mean().item(), "images": len(kept), "skipped": len(skipped)})
    bounds = params.eps if params.method != "gd" else [float("nan")]
    generator = torch.Generator().manual_seed(params.seed)
    rows, curve = [], []
    total_steps = len(bounds) * len(clean_batches)
    for k, eps in enumerate(bounds, 1):
        adv_pred, adv_pred_float, linfs, l2s = [], [], [], []
        for b, (images, indices) in enumerate(clean_batches):
            x = images.to(device)
            labels = torch.full((len(x),), target) if target is not None else truth[indices]
            result = attack(
                forward,
                x,
                labels.to(device),
                params.method,
                target is not None,
                None if np.isnan(eps) else eps,
                params.n_steps,
                params.step_for(eps if not np.isnan(eps) else 0.0),
                params.norm,
                params.random_start,
                generator,
                float_outcome=True,
            )
            adv_pred.append(result.predictions)
            adv_pred_float.append(result.success)
            linf, l2 = perturbation_sizes(result.quantized, x)
            linfs.append(linf.cpu())
            l2s.append(l2.cpu())
            ctx.progress((k - 1) * len(clean_batches) + b + 1, total_steps, f"attacking (eps {k}/{len(bounds)})")
        adv, fooled_float = torch.cat(adv_pred), torch.cat(adv_pred_float)
        linf_all, l2_all = torch.cat(linfs), torch.cat(l2s)
        fooled = adv == target if target is not None else adv != y
        attacked = int(eligible.sum())
        point = {
            "eps": eps,
            "clean_acc": correct.float().mean().item(),
            "robust_acc": (adv == y).float().mean().item(),
            "success_rate": (fooled & eligible).sum().item() / attacked if attacked else 0.0,
            "success_rate_float": (fooled_float & eligible).sum().item() / attacked if attacked else 0.0,
            "linf": linf_all.max().item(),
            "l2_mean": l2_all.mean().item(),
            "attacked": attacked,
        }
        curve.append(point)
        ctx.metrics({k2: v for k2, v in point.items() if not (isinstance(v, float) and np.isnan(v))}, step=k)
        for row, i in enumerate(kept):
            rows.append(
                (
                    labelled[i].rel,
                    names[int(y[row])],
                    names[int(clean_pred[row])],
                    names[int(adv[row])],
                    int(fooled[row]),
                    int(eligible[row]),
                    f"{linf_all[row]:.6f}",
                    f"{l2_all[row]:.6f}",
                    eps,
                )
            )
    ctx.artifacts.write_text(
        "per_image",
        "per_image.csv",
        csv_text(["path", "label", "clean_pred", "adv_pred", "fooled", "counted", "linf", "l2", "eps"], rows),
    )
    header = list(curve[0])
    ctx.artifacts.write_text("robustness", "robustness.csv", csv_text(header, [[p[h] for h in header] for p in curve]))
    if len(curve) > 1:
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(6, 4))
        xs = [p["eps"] * 255 for p in curve]
        ax.plot(xs, [p["robust_acc"] for p in curve], "-o", label="robust accuracy")
        ax.plot(xs, [p["success_rate"] for p in curve], "-s", label="attack success rate")
        ax.axhline(curve[0]["clean_acc"], color="gray", linestyle="--", label="clean accuracy")
        ax.set_xlabel("eps (x/255)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title(f"{params.method} robustness ({params.norm})")
        fig.tight_layout()
        ctx.artifacts.save_figure("robustness_png", "robustness.png", fig)


task: TaskPlugin[AdversarialParams] = TaskPlugin(
    name="adversarial",
    summary="Adversarial examples (gd, fgsm, pgd) for one image, or a robustness evaluation over a folder.",
    params=AdversarialParams,
    run=run,
    check=check,
    headline="success_rate",
)

__all__ = ["AdversarialParams", "Path", "task"]
