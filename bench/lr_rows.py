"""Row 8 of `make bench`: on the demo's few-shot task, does ``--lr auto`` with the default options reach the best
of a small hand grid? A user does not know the tuned values; the grid stands for the user who searched.

    python bench/run.py --rows 8
    python bench/lr_rows.py --seeds 0,1,2        # the same row alone, with each run's accuracy printed

The task is `make demo`'s (examples/demo.py): a test_resnet trained on digits 0-4 (100 each, 64 px, 6 epochs),
then fine-tuned (``--strategy full``) on 5 images per class of digits 5-9 and validated on 60 others per class.
Every figure is the final epoch's val_acc, averaged over the seeds; fp32, so the runs are the same on every
machine of a kind.
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from rows import Row, run_job, tlq_env  # noqa: E402

# The hand grid: the demo's tuned lr and its neighbours, two lengths of training, two image sizes; no flips or
# crops (the demo's --augment none) and batches of 16, as the demo's transfer job.
GRID = {"lr": [1e-3, 3e-3, 1e-2], "epochs": [20, 40], "image_size": [32, 64]}
HAND = {"augment": "none", "batch_size": 16}
# What a user who knows none of that types: --lr auto, epochs and batch size left to tlq (sized to the data: 100
# epochs of 8 for these 25 images), the source model's 64 px; augmentation is the user's call (the README: flips and
# crops suit photos, not digits), so the row that counts passes --augment none and the default light is reported.
AUTO = {"lr": "auto", "augment": "none"}


def demo_task(work: Path, device: str):
    """The demo's data and source model: (env, source job id, training folder, validation folder)."""
    from tests.support import make_digits

    root = work / "few-shot"
    source = make_digits(root / "source", range(5), per_class=100)
    train = make_digits(root / "train", range(5, 10), per_class=5)
    val = make_digits(root / "val", range(5, 10), per_class=60, offset=5)
    env = tlq_env(work / "home-lr", device)
    job = run_job(env, "finetune", "test_resnet", device, data=str(source), strategy="full", epochs=6, lr=2e-3,
                  image_size=64, augment="none", precision="fp32")  # fmt: skip
    return env, job["id"], train, val


def few_shot(env, source: int, train, val, device: str, seed: int, **options) -> dict:
    return run_job(env, "finetune", f"job:{source}", device, data=str(train), val_data=str(val), strategy="full",
                   precision="fp32", seed=seed, **options)  # fmt: skip


def lr_auto_row(work: Path, device: str, seeds=(0, 1, 2), verbose: bool = False) -> list[Row]:
    """Defaults + ``--lr auto`` (and the same with ``--augment none``) against the best of ``GRID``, each the mean
    of ``seeds``; target: within 0.05 of the grid's best.

    The grid's accuracies are kept in ``work/few-shot-grid-<device>.json``: they do not depend on how tlq chooses
    an lr, so a run after a change to the range test reruns only the ``--lr auto`` jobs (delete the file after a
    change to training itself)."""
    env, source, train, val = demo_task(work, device)
    kept_path = work / f"few-shot-grid-{device}.json"
    kept = json.loads(kept_path.read_text()) if kept_path.exists() else {}

    def acc(options: dict, seed: int) -> tuple[float, dict | None]:
        key = json.dumps(options | {"seed": seed}, sort_keys=True)
        if key in kept:
            return kept[key], None
        job = few_shot(env, source, train, val, device, seed, **options)
        if options["lr"] != "auto":
            kept[key] = job["metrics"]["val_acc"]
            kept_path.write_text(json.dumps(kept, indent=1))
        return job["metrics"]["val_acc"], job

    def mean_acc(options: dict) -> tuple[float, list[dict]]:
        accs, jobs = zip(*(acc(options, seed) for seed in seeds), strict=True)
        if verbose:
            print(f"  {options}: {', '.join(f'{a:.3f}' for a in accs)}", flush=True)
        return statistics.mean(accs), jobs

    grid = {}
    for values in itertools.product(*GRID.values()):
        options = dict(zip(GRID, values, strict=True))
        grid[tuple(values)], _ = mean_acc(options | HAND)
    auto, auto_jobs = mean_acc(AUTO)
    auto_light, light_jobs = mean_acc({"lr": "auto"})
    best = max(grid, key=grid.get)
    # The grid's best, its lr left to the range test: the lr finder alone, every other choice made by hand.
    at_best = dict(zip(GRID, best, strict=True)) | HAND | {"lr": "auto"}
    auto_best, best_jobs = mean_acc(at_best)
    best_text = ", ".join(f"{k} {v:g}" for k, v in zip(GRID, best, strict=True))
    spread = f"the grid's 12 ran {min(grid.values()):.3f}-{grid[best]:.3f}"

    def sizes(jobs):  # what tlq chose for the epochs and batch size left to it, from the model card
        path = next(a["path"] for a in jobs[0]["artifacts"] if a["kind"] == "model_card")
        card = json.loads(Path(path).read_text())["params"]
        return f"tlq chose {card['epochs']} epochs of {card['batch_size']}-image batches"

    def chosen(jobs):
        return ", ".join(f"{job['metrics']['lr_chosen']:.2g}" for job in jobs)

    name = f"few-shot digits (5 a class), --lr auto vs best of a hand grid, {len(seeds)} seeds: val_acc"
    return [
        Row(
            f"{name}, defaults and --augment none (digits)",
            auto,
            grid[best],
            "",
            "within 0.05",
            auto >= grid[best] - 0.05,
            f"lr chosen {chosen(auto_jobs)}; {sizes(auto_jobs)}; grid best: {best_text}; {spread}",
        ),
        Row(
            f"{name}, every default (augment light: crops and flips, for photos)",
            auto_light,
            grid[best],
            "",
            "-",
            None,
            f"lr chosen {chosen(light_jobs)}; a flipped digit is no digit",
        ),
        Row(
            f"{name}, the grid's best options but --lr auto",
            auto_best,
            grid[best],
            "",
            "within 0.05",
            auto_best >= grid[best] - 0.05,
            f"lr chosen {chosen(best_jobs)}",
        ),
    ]


if __name__ == "__main__":
    import argparse
    import os

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--work", default=str(HERE / "work"))
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    for row in lr_auto_row(Path(args.work), args.device, [int(s) for s in args.seeds.split(",")], verbose=True):
        print(f"{row.name}: {row.tlq:.3f} vs {row.baseline:.3f} ({row.note}); met: {row.met}")
