"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates", section 3.3; fastai's ``lr_find``): train
for about 100 steps while the learning rate rises exponentially from 1e-7 to 10, record the loss of each step,
and read a learning rate off the curve.

It runs the job's own training step, optimizer and strategy (the caller builds them: ``tlq.ml.finetune_loops``),
so the curve is the one the job would train on, not a stand-in's. Afterwards the model, its batch-norm
statistics, the optimizer and the random state are as they were: the test chooses, it never trains.

The rules that read the curve (``suggest``); ``minimum`` chooses by default:

- ``minimum``: a tenth of the learning rate at the lowest smoothed loss (fastai's ``minimum``; Smith's "an order
  of magnitude below" where the loss stops falling);
- ``valley`` (fastai's default since 2.5): the longest stretch over which the smoothed loss keeps falling, and
  the learning rate two thirds of the way down it;
- ``steep``: where the smoothed loss falls fastest against log lr.

On the few-shot digits task (25 images: `make demo`'s transfer job; README, "Choosing the learning rate") the
loss falls mostly because the model memorizes the few images, and ``valley``'s stretch often began in the flat
noise before the fall. Over 9 curves (3 settings x 3 seeds) it chose 2.5e-4 to 1.8e-2 (fastai's smoothing) or
1.7e-4 to 2.3e-3 (this one), seeds of one setting up to 11x apart; ``minimum`` chose 0.0045-0.0079 with batches
of 16 or with augmentation, and 0.011-0.042 on 25 unaugmented images in one batch (a loss at 0 for a decade of lr
before it diverges).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from tlq.errors import BadInput

RULES = ("valley", "minimum", "steep")
DEFAULT_RULE = "minimum"


@dataclass
class LrCurve:
    """What a range test saw: the learning rate and loss of every step, the loss smoothed, each rule's
    suggestion, and the one chosen (by ``rule``)."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    rule: str
    suggestions: dict[str, float] = field(default_factory=dict)

    @property
    def chosen(self) -> float:
        return self.suggestions[self.rule]

    def csv_text(self) -> str:
        """``step,lr,loss,smoothed_loss``, one row per step (``lr_find.csv``)."""
        from tlq.ml.reports import csv_text

        rows = zip(range(1, len(self.lrs) + 1), self.lrs, self.losses, self.smoothed, strict=True)
        return csv_text(["step", "lr", "loss", "smoothed_loss"], rows)

    def figure(self, title: str = "learning-rate range test"):
        """Smoothed loss against lr on a log axis, the raw losses faint behind it, each suggestion marked and the
        chosen one labelled (``lr_find.png``)."""
        from tlq.ml.reports import pyplot

        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4.5))
        ax.plot(self.lrs, self.losses, color="0.75", linewidth=0.8, label="loss")
        ax.plot(self.lrs, self.smoothed, color="C0", label="smoothed loss")
        for i, (rule, lr) in enumerate(sorted(self.suggestions.items())):
            y = float(np.interp(math.log(lr), np.log(self.lrs), self.smoothed))
            chosen = rule == self.rule
            label = f"{rule}: {lr:.2g}" + (" (chosen)" if chosen else "")
            marker, color, size = ("o", "C3", 9) if chosen else ("x", f"C{i + 1}", 6)
            ax.plot([lr], [y], marker, color=color, markersize=size, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        top = max(self.smoothed[0], min(self.smoothed)) * 1.5
        ax.set_ylim(min(min(self.smoothed), min(self.losses)) * 0.9, top)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
        ax.set_title(title)
        fig.tight_layout()
        return fig


def smooth(losses: list[float], beta: float = 0.9) -> list[float]:
    """An exponential moving average with bias correction (as fastai's recorder): one noisy batch, of 16 images
    here, would otherwise decide the curve."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, 1):
        average = beta * average + (1 - beta) * loss
        out.append(average / (1 - beta**i))
    return out


def valley(lrs: list[float], smoothed: list[float]) -> float:
    """fastai's ``valley``: the longest run of ever lower losses (a longest decreasing subsequence), and the lr
    two thirds of the way along it: low enough to be stable, high enough to be fast."""
    n = len(smoothed)
    longest = [1] * n
    start, end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if smoothed[i] < smoothed[j] and longest[i] < longest[j] + 1:
                longest[i] = longest[j] + 1
        if longest[end] < longest[i]:
            end = i
            start = end - longest[end]
    third = (end - start) / 3
    return lrs[max(0, start + int(third) + int(third / 2))]


def minimum(lrs: list[float], smoothed: list[float]) -> float:
    return lrs[int(np.argmin(smoothed))] / 10


def steep(lrs: list[float], smoothed: list[float]) -> float:
    if len(lrs) < 2:
        return lrs[0]
    slopes = np.gradient(np.asarray(smoothed), np.log(np.asarray(lrs)))
    return lrs[int(np.argmin(slopes))]


def suggest(lrs: list[float], smoothed: list[float]) -> dict[str, float]:
    """Each rule's learning rate. As fastai does, the first tenth of the steps (the average still settling) and
    the last few (the divergence) are left out; a curve too short for that is read whole."""
    skip_start, skip_end = len(lrs) // 10, 5
    if len(lrs) - skip_start - skip_end >= 5:
        lrs, smoothed = lrs[skip_start:-skip_end], smoothed[skip_start:-skip_end]
    return {"valley": valley(lrs, smoothed), "minimum": minimum(lrs, smoothed), "steep": steep(lrs, smoothed)}


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """``steps`` learning rates rising exponentially from ``start_lr`` to ``end_lr``."""
    if steps == 1:
        return [start_lr]
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


def range_test(
    model,
    optimizer,
    step: Callable[[], float],
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    rule: str = DEFAULT_RULE,
    diverge: float = 4.0,
    on_step: Callable[[int, int], None] | None = None,
) -> LrCurve:
    """Runs ``step`` (one training step: forward, backward, ``optimizer.step()``; returns the batch's loss) at
    exponentially rising learning rates, and restores ``model``, ``optimizer`` and the random state afterwards.

    Each of the optimizer's groups keeps its ratio to the first (a backbone at ``lr x --backbone-lr-mult``); the
    curve's lr is the first group's, as the job's ``lr`` metric is. The test stops early once the smoothed loss
    passes ``diverge`` times its lowest, or is no longer a number.

    Args:
        model: The module whose weights and buffers ``step`` changes.
        optimizer: The optimizer ``step`` steps; its groups' lrs are overwritten at every step.
        step: One training step on the next batch.
        start_lr: The first learning rate.
        end_lr: The last learning rate (if the loss has not diverged before).
        steps: How many steps at most.
        rule: Which suggestion ``LrCurve.chosen`` is (``RULES``).
        diverge: The stop: the smoothed loss over its minimum.
        on_step: Called with (step, steps) after each step, for progress.
    """
    import torch

    from tlq.ml.training import rng_state, set_rng_state

    if rule not in RULES:
        raise ValueError(f"unknown lr-find rule {rule!r}; use one of {', '.join(RULES)}")
    # Averaged over about a tenth of the test (beta 0.9 over 100 steps; fastai's 0.98 averages over 50 steps, half
    # the test, and its curve lags the loss by more than a decade of lr).
    beta = max(0.0, 1 - 10 / steps)
    # Kept in host memory: a second copy of the weights on the device could run a model that trains out of memory.
    saved_model = {name: value.detach().to("cpu", copy=True) for name, value in model.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    saved_rng = rng_state()
    # The GPU's generator too (dropout, drop-path on the device): a job at the chosen lr must train as one given it.
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    first = optimizer.param_groups[0]["lr"] or 1.0
    ratios = [group["lr"] / first for group in optimizer.param_groups]
    lrs, losses = [], []
    try:
        for i, lr in enumerate(lr_schedule(start_lr, end_lr, steps), 1):
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            loss = float(step())
            if not math.isfinite(loss):
                break
            lrs.append(lr)
            losses.append(loss)
            if on_step is not None:
                on_step(i, steps)
            smoothed = smooth(losses, beta)
            if len(losses) > 1 and smoothed[-1] > diverge * min(smoothed):
                break
    finally:
        with torch.no_grad():
            model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optimizer)
        set_rng_state(saved_rng)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
    if not lrs:
        # At 1e-7 the lr is not the cause (finetune's --lr auto has no --start-lr to lower).
        fix = "lower --start-lr" if start_lr > 1e-4 else "try --precision fp32, or check the model and the images"
        raise BadInput(f"the lr range test's loss was not a number at its first step (lr {start_lr:g}); {fix}")
    smoothed = smooth(losses, beta)
    return LrCurve(lrs, losses, smoothed, rule, suggest(lrs, smoothed))


def record(ctx, curve: LrCurve, title: str) -> None:
    """Writes the curve (``lr_find.csv``, ``lr_find.png``) and the metrics ``lr_chosen`` and ``lr_<rule>`` of each
    rule, through the job's context."""
    ctx.artifacts.write_text("lr_find", "lr_find.csv", curve.csv_text())
    ctx.artifacts.save_figure("lr_find_png", "lr_find.png", curve.figure(title))
    suggestions = {f"lr_{rule}": lr for rule, lr in curve.suggestions.items()}
    ctx.metrics({"lr_chosen": curve.chosen, **suggestions, "lr_find_steps": len(curve.lrs)})
    found = ", ".join(f"{rule} {lr:.3g}" for rule, lr in curve.suggestions.items())
    ctx.log.info("lr range test, %d steps: %s; chose %s", len(curve.lrs), found, curve.rule)
