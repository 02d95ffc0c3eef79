"""`tlq plot`: one metric of several jobs overlaid in one PNG, with a legend naming backbone and parameters.

The PNG carries its curves' labels in a text chunk (``tlq:curves``, JSON), so scripts and tests can read what a
plot shows without looking at it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Curve:
    job: int
    label: str
    steps: list[int]
    values: list[float]


def curve_label(job: dict, varying: list[str]) -> str:
    """``job 12: vgg16 lr=0.001``: the job, its backbone and the parameters that differ between the plotted jobs."""
    parts = [f"job {job['id']}:", job.get("backbone") or job["task"]]
    parts += [f"{key}={job['params'].get(key)}" for key in varying]
    return " ".join(parts)


def plot_curves(curves: list[Curve], metric: str, path: Path, title: str | None = None) -> Path:
    """Draws the curves (x: step, which is the epoch for training metrics) and saves a PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figure, axes = plt.subplots(figsize=(8, 4.8))
    for curve in curves:
        marker = "o" if len(curve.steps) <= 30 else None
        axes.plot(curve.steps, curve.values, marker=marker, markersize=3, linewidth=1.6, label=curve.label)
    axes.set_xlabel("epoch / step")
    axes.set_ylabel(metric)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.set_title(title or f"{metric} of {len(curves)} job{'s' if len(curves) != 1 else ''}")
    axes.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(handle)
    try:
        labels = json.dumps([{"job": c.job, "label": c.label, "points": len(c.steps)} for c in curves])
        figure.savefig(
            tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Title": axes.get_title(), "tlq:curves": labels}
        )
        os.replace(tmp, path)
    finally:
        plt.close(figure)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def curves_in_png(path: Path) -> list[dict]:
    """The curves a PNG written by ``plot_curves`` shows, read back from its text chunk."""
    from PIL import Image

    with Image.open(path) as image:
        image.load()
        return json.loads(image.text.get("tlq:curves", "[]"))
