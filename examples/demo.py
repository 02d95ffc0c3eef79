"""`make demo`: tlq's main job on the embedded default, with no server and no network.

It writes real handwritten digits (scikit-learn's scans) as image files, starts a `tlq worker` on the
embedded SQLite broker, submits a feature-extract job, waits for it with a progress bar and shows its
results. Everything lands in TLQ_HOME (default ~/.tlq), so `tlq jobs` and `tlq show` work afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "demo-data" / "digits"


def write_digits(root: Path, per_class: int = 30) -> Path:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if root.exists() and len(list(root.rglob("*.png"))) == 10 * per_class:
        return root
    digits = load_digits()
    for label in range(10):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        for i in np.flatnonzero(digits.target == label)[:per_class]:
            array = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            Image.fromarray(array).resize((32, 32), Image.BILINEAR).convert("RGB").save(root / str(label) / f"{i}.png")
    return root


def tlq(*args: str, **kwargs) -> subprocess.CompletedProcess:
    print("$ tlq " + " ".join(args), flush=True)
    return subprocess.run([sys.executable, "-m", "tlq", *args], check=True, **kwargs)


def main() -> int:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    os.environ.update(env)
    data = write_digits(DATA)
    print(f"demo data: {len(list(data.rglob('*.png')))} real handwritten digits in {data}")
    tlq("config")
    log = open(REPO / "demo-data" / "worker.log", "ab")
    worker = subprocess.Popen(
        [sys.executable, "-m", "tlq", "worker", "--name", "demo-worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while b" ready." not in (REPO / "demo-data" / "worker.log").read_bytes():
            if worker.poll() is not None or time.monotonic() > deadline:
                print("the worker did not start; see demo-data/worker.log", file=sys.stderr)
                return 1
            time.sleep(0.3)
        tlq("workers")
        tlq("submit", "feature-extract", "--backbone", "resnet18", "--no-pretrained", "--data", str(data), "--wait")
        tlq("jobs", "--limit", "5")
    finally:
        worker.terminate()
        worker.wait(30)
    print("\nNext: `tlq show ID --json`, `tlq jobs`, and the README's CLI tour.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
