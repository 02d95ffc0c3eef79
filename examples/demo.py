"""`make demo`: transfer learning as queued jobs, offline, on the embedded default (no server, no network).

1. Writes real handwritten digits (scikit-learn's scans) as PNG files: a source set (digits 0-4, 100 each)
   and a few-shot target set (digits 5-9, 5 each to train on, 60 each to validate on).
2. Starts a `tlq worker` on the embedded SQLite broker.
3. Trains a source model on digits 0-4 (timm's tiny `test_resnet`, from random init).
4. Transfers it to digits 5-9 (`--backbone job:ID`) and, for comparison, trains the same backbone from
   random init the same way; prints both validation accuracies side by side.
5. Predicts the target validation images with the transferred model.

Everything lands in TLQ_HOME (default ~/.tlq), so `tlq jobs`, `tlq show ID` and the artifacts (curves and
confusion matrices as PNG) are there afterwards. With ImageNet weights available, the same commands work
with `--backbone vgg16`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "demo-data"
BACKBONE = "test_resnet"
# Images per class (source, target training, target validation), epochs (source, transfer) and image size.
SCALES = {
    "full": {"source": 100, "train": 5, "val": 60, "source_epochs": 6, "epochs": 20, "size": 64},
    # The same jobs on a few images, for tests/integration/test_demo.py: it shows the pipeline, not transfer.
    "quick": {"source": 10, "train": 5, "val": 4, "source_epochs": 1, "epochs": 2, "size": 32},
}


def write_digits(root: Path, classes, per_class: int, offset: int = 0) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    for label in classes:
        folder = root / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(digits.target == label)[offset : offset + per_class]:
            array = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(array).resize((32, 32), Image.BILINEAR).convert("RGB").save(folder / f"{i}.png")
    return root


def tlq(*args: str, capture: bool = False) -> str:
    if not capture:
        print("$ tlq " + " ".join(args), flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "tlq", *args], check=True, text=True, stdout=subprocess.PIPE if capture else None
    )
    return result.stdout if capture else ""


def submit(*args: str) -> int:
    job_id = json.loads(tlq("submit", *args, "--json", capture=True))["id"]
    print(f"$ tlq submit {' '.join(args)}\n{job_id}", flush=True)
    return job_id


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Transfer learning as queued jobs, offline.")
    parser.add_argument("--data", type=Path, default=DATA, help="where the digits go [default: demo-data/]")
    parser.add_argument("--quick", action="store_true", help="the same jobs on a few images (for tests)")
    args = parser.parse_args(argv)
    scale = SCALES["quick" if args.quick else "full"]
    data = args.data
    common = ["--image-size", str(scale["size"]), "--augment", "none", "--strategy", "full"]
    transfer_args = [*common, "--epochs", str(scale["epochs"]), "--lr", "3e-3", "--batch-size", "16"]
    os.environ["HF_HUB_OFFLINE"] = "1"
    source = write_digits(data / "source", range(5), scale["source"])
    target = write_digits(data / "target-train", range(5, 10), scale["train"])
    target_val = write_digits(data / "target-val", range(5, 10), scale["val"], offset=scale["train"])
    n_source, n_train, n_val = (5 * scale[k] for k in ("source", "train", "val"))
    print(
        f"demo data in {data}: {n_source} source digits (0-4), {n_train} target digits (5-9) to learn from, "
        f"{n_val} to validate"
    )
    tlq("config")
    log_path = data / "worker.log"
    log = open(log_path, "ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tlq", "worker", "--name", "demo-worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        start = log_path.stat().st_size
        deadline = time.monotonic() + 90
        while b" ready." not in log_path.read_bytes()[start:]:
            if worker.poll() is not None or time.monotonic() > deadline:
                print(f"the worker did not start; see {log_path}", file=sys.stderr)
                return 1
            time.sleep(0.3)
        tlq("workers")
        src = submit(
            "finetune",
            "--backbone",
            BACKBONE,
            "--no-pretrained",
            "--data",
            str(source),
            *common,
            "--epochs",
            str(scale["source_epochs"]),
            "--lr",
            "2e-3",
            "--name",
            "demo-source",
        )
        tlq("wait", str(src))
        transfer = submit(
            "finetune",
            "--backbone",
            f"job:{src}",
            "--data",
            str(target),
            "--val-data",
            str(target_val),
            *transfer_args,
            "--name",
            "demo-transfer",
        )
        scratch = submit(
            "finetune",
            "--backbone",
            BACKBONE,
            "--no-pretrained",
            "--data",
            str(target),
            "--val-data",
            str(target_val),
            *transfer_args,
            "--name",
            "demo-scratch",
        )
        tlq("wait", str(transfer))
        tlq("wait", str(scratch))
        predicted = submit("predict", "--backbone", f"job:{transfer}", "--data", str(target_val))
        tlq("wait", str(predicted))
        jobs = {j: json.loads(tlq("show", str(j), "--json", capture=True)) for j in (src, transfer, scratch, predicted)}
        tlq("jobs", "--limit", "4")
    finally:
        worker.terminate()
        worker.wait(30)
    acc = {j: jobs[j]["metrics"].get("val_acc", float("nan")) for j in (src, transfer, scratch)}
    predicted_acc = jobs[predicted]["metrics"]["accuracy"]
    print(
        f"\nsource model (job {src}, digits 0-4): val_acc {acc[src]:.3f}\n"
        f"few-shot digits 5-9, 5 images per class, same backbone, same training:\n"
        f"  from the source model (job:{src}) -> job {transfer}: val_acc {acc[transfer]:.3f}\n"
        f"  from random init               -> job {scratch}: val_acc {acc[scratch]:.3f}\n"
        f"predict with job:{transfer} on the {n_val} validation digits: accuracy {predicted_acc:.3f}"
    )
    curves = next(a["path"] for a in jobs[transfer]["artifacts"] if a["kind"] == "curves")
    print(f"\nLook at {curves}, or run `tlq show {transfer}`.")
    if args.quick:  # too few images to show transfer: every job ran, which is what the quick demo checks
        return 0 if all(jobs[j]["status"] == "succeeded" for j in jobs) else 1
    return 0 if acc[transfer] > acc[scratch] else 1


if __name__ == "__main__":
    sys.exit(main())
