"""Reports people would rather look at than read: confusion matrices, per-class accuracy, training curves."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(predictions: Sequence[int], targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["true\\predicted", *classes])
    for name, row in zip(classes, matrix, strict=True):
        writer.writerow([name, *row.tolist()])
    return buffer.getvalue()


def per_class_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["class", "images", "correct", "accuracy"])
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        correct = int(matrix[i, i])
        writer.writerow([name, total, correct, f"{correct / total:.4f}" if total else ""])
    return buffer.getvalue()


def confusion_figure(matrix: np.ndarray, classes: Sequence[str], title: str = "validation confusion matrix"):
    plt = pyplot()
    n = len(classes)
    size = min(12, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels=list(classes), rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 25:
        high = matrix.max() or 1
        for i in range(n):
            for j in range(n):
                ax.text(
                    j,
                    i,
                    int(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if matrix[i, j] > high / 2 else "black",
                )
    fig.tight_layout()
    return fig


def curves_figure(history: dict[str, list[tuple[int, float]]], title: str = "training curves"):
    """Accuracy and loss per epoch, train against validation."""
    plt = pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ax in (("acc", acc_ax), ("loss", loss_ax)):
        for split, style in (("train", "-o"), ("val", "-s")):
            points = history.get(f"{split}_{name}", [])
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], style, label=split, markersize=3)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylim(0, 1.02)
    fig.suptitle(title)
    fig.tight_layout()
    return fig
