"""Reports people would rather look at than read: confusion matrices, per-class accuracy, training curves, and
the CSV files every part of tlq writes (`csv_text`, `csv_cell`).

numpy is imported where it is used, so the CLI can write CSV without loading it.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

# A cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` made safe to open in a spreadsheet: text that would start a formula gets a leading ``'``.

    Cells hold file names, class folders, job names, params and tags, all chosen by whoever made the data; a file
    called ``=HYPERLINK("http://x")`` must not become a live link (or a command) in the report someone opens.
    Numbers, and text that is a plain number such as ``-0.5``, are left as they are: a spreadsheet reads them
    as numbers, never as formulas.
    """
    if isinstance(value, str) and value.startswith(FORMULA_START) and not NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_text(header: Sequence[Any], rows: Iterable[Iterable[Any]]) -> str:
    """A CSV file's text, every cell (the header too) passed through ``csv_cell``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([csv_cell(v) for v in header])
    writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buffer.getvalue()


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix(predictions: Sequence[int], targets: Sequence[int], num_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    import numpy as np

    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(targets, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    rows = ([name, *row.tolist()] for name, row in zip(classes, matrix, strict=True))
    return csv_text(["true\\predicted", *classes], rows)


def per_class_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    rows = []
    for i, name in enumerate(classes):
        total = int(matrix[i].sum())
        correct = int(matrix[i, i])
        rows.append([name, total, correct, f"{correct / total:.4f}" if total else ""])
    return csv_text(["class", "images", "correct", "accuracy"], rows)


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


def write_finetune_reports(ctx, params, model, backbone, data_config, classes, final, fit) -> None:
    """finetune's outputs: model and card, confusion matrix (CSV, PNG), per-class accuracy, curves, and the final
    metrics."""
    from tlq.ml.model_card import save_model

    matrix = confusion_matrix(final.predictions, final.targets, len(classes))
    ctx.artifacts.write_text("confusion_matrix", "confusion_matrix.csv", confusion_csv(matrix, classes))
    ctx.artifacts.save_figure("confusion_matrix_png", "confusion_matrix.png", confusion_figure(matrix, classes))
    ctx.artifacts.write_text("per_class_accuracy", "per_class_accuracy.csv", per_class_csv(matrix, classes))
    title = f"job {ctx.job_id}: {backbone.arch}, {params.strategy}"
    ctx.artifacts.save_figure("curves", "curves.png", curves_figure(fit.history, title))
    summary = {"final_val_acc": final.acc, "best_val_acc": fit.best_acc, "best_epoch": fit.best_epoch}
    ctx.metrics(summary)
    metrics = {name: values[-1][1] for name, values in fit.history.items()} | summary
    save_model(
        ctx.artifacts,
        model,
        {
            "job_id": ctx.job_id,
            "arch": backbone.arch,
            "backbone": ctx.backbone.name,
            "weights_source": backbone.source,
            "lineage": backbone.extra.get("lineage", [ctx.backbone.name]),
            "num_classes": len(classes),
            "classes": classes,
            "data_config": data_config,
            "strategy": params.strategy,
            "params": params.model_dump(mode="json"),
            "metrics": metrics,
        },
    )
