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

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "demo-data"
BACKBONE = "test_resnet"
COMMON = ["--image-size", "64", "--augment", "none", "--strategy", "full"]
TRANSFER = [*COMMON, "--epochs", "20", "--lr", "3e-3", "--batch-size", "16"]


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


def main() -> int:
    os.environ["HF_HUB_OFFLINE"] = "1"
    source = write_digits(DATA / "source", range(5), 100)
    target = write_digits(DATA / "target-train", range(5, 10), 5)
    target_val = write_digits(DATA / "target-val", range(5, 10), 60, offset=5)
    print(f"demo data in {DATA}: 500 source digits (0-4), 25 target digits (5-9) to learn from, 300 to validate")
    tlq("config")
    log_path = DATA / "worker.log"
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
            *COMMON,
            "--epochs",
            "6",
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
            *TRANSFER,
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
            *TRANSFER,
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
        f"predict with job:{transfer} on the 300 validation digits: accuracy {predicted_acc:.3f}"
    )
    curves = next(a["path"] for a in jobs[transfer]["artifacts"] if a["kind"] == "curves")
    print(f"\nLook at {curves}, or run `tlq show {transfer}`.")
    return 0 if acc[transfer] > acc[scratch] else 1


if __name__ == "__main__":
    sys.exit(main())
