"""Do ideal images look like their class? An independent judge counts the digits it recognizes.

    python bench/ideal_digits.py                          # the default, the readable preset and the data prior
    python bench/ideal_digits.py --setting tv0='{"tv_weight": 0}'

Trains test_resnet on all ten of scikit-learn's digits the way `make demo` trains its source model (100 per
class, 64 px, 6 epochs from random init, full fine-tune), renders each digit's ideal image through tlq jobs
(`tlq run`, in this process) for every setting, and hands each image to a judge no tlq model saw: an SVM
trained on scikit-learn's real 8x8 digits, fed the ideal image as those digits are stored (grey, area-downscaled
to 8x8, 0..16 with bright strokes on black, as tests/support.make_digits writes them). Prints a Markdown table
per setting and saves the ten images of each setting side by side (``--pictures``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the test helpers (tests/support.py): real digits

# "{digits}" stands for the folder of the model's training digits (a data prior needs real images).
SETTINGS = {"default": {}, "readable": {"preset": "readable"}, "prior": {"prior": "{digits}", "grey": True}}


def digit_judge():
    """An RBF SVM on all 1797 of scikit-learn's 8x8 digits (0..16, bright strokes on black); 0.99 accurate on
    held-out digits in scikit-learn's own example."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    return SVC(gamma=0.001).fit(digits.data, digits.target)


def as_sklearn_digit(png: Path) -> np.ndarray:
    """An image as scikit-learn stores a digit: grey, area-downscaled to 8x8, 0..16.

    tlq's digits are the 8x8 scans scaled to 0..255 (bright strokes on a black background, grey in all three
    channels), so the way back is the mean of the channels, the mean of each 8x8 block, and x16/255.
    """
    from PIL import Image

    grey = np.asarray(Image.open(png).convert("RGB"), dtype=np.float64).mean(2)
    side = grey.shape[0] // 8
    blocks = grey[: side * 8, : side * 8].reshape(8, side, 8, side).mean((1, 3))
    return blocks * 16 / 255


def judge_images(judge, pngs: dict[int, Path]) -> dict[int, int]:
    """The judge's digit for each class's ideal image."""
    return {c: int(judge.predict(as_sklearn_digit(p).reshape(1, -1))[0]) for c, p in pngs.items()}


def train_digits_model(env, root: Path, per_class: int = 100, epochs: int = 6) -> str:
    """The `make demo` source model's recipe on all ten digits; returns its backbone (``job:ID``)."""
    from tests.support import make_digits
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import run_here

    data = make_digits(root / "digits", classes=range(10), per_class=per_class)
    params = {"data": str(data), "strategy": "full", "epochs": epochs, "lr": 2e-3, "image_size": 64}
    params |= {"augment": "none", "precision": "fp32"}  # fp32: the same model on every machine
    job_id = run_here(env, JobSpec(task="finetune", backbone="test_resnet", pretrained=False, params=params))
    return f"job:{job_id}"


def render(env, backbone: str, setting: dict, classes=range(10)) -> dict[int, dict]:
    """Each class's ideal-image job under ``setting``: its metrics and the path of ideal.png."""
    from tlq.db import queries
    from tlq.jobs.spec import JobSpec
    from tlq.jobs.submit import run_here

    out = {}
    for c in classes:
        params = {"target": str(c), "snapshots": 0, **setting}
        job_id = run_here(env, JobSpec(task="ideal-image", backbone=backbone, params=params))
        with env.db.read_session() as session:
            job = queries.job_as_dict(session, queries.get_job(session, job_id), env.settings.artifacts_dir)
        if job["status"] != "succeeded":
            raise SystemExit(f"ideal-image job {job_id} {job['status']}: {job['error']}")
        files = {a["kind"]: Path(a["path"]) for a in job["artifacts"]}
        out[c] = {**job["metrics"], "image": files["image"], "seconds": job.get("duration") or 0}
    return out


def save_pictures(rows: dict[str, dict[int, dict]], path: Path) -> None:
    """The ten ideal images of each setting in a row, 4x enlarged (nearest), each setting's name on the left."""
    from PIL import Image, ImageDraw

    cell, label = 128, 90
    sheet = Image.new("RGB", (label + 10 * cell, cell * len(rows)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (name, results) in enumerate(rows.items()):
        draw.text((4, r * cell + cell // 2 - 6), name, fill="black")
        for c, result in results.items():
            image = Image.open(result["image"]).convert("RGB").resize((cell, cell), Image.NEAREST)
            sheet.paste(image, (label + c * cell, r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--home", type=Path, help="TLQ_HOME for the jobs [default: a temporary folder]")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON", help="ideal-image options")
    parser.add_argument("--seeds", type=lambda t: [int(x) for x in t.split(",")], default=[0], help="0,1,2")
    parser.add_argument("--pictures", type=Path, help="save the images of every setting in one PNG here")
    args = parser.parse_args(argv)
    settings = dict(SETTINGS) if not args.setting else {}
    for item in args.setting:
        name, _, options = item.partition("=")
        settings[name] = json.loads(options or "{}")

    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tlq.config import Settings
    from tlq.env import Environment

    root = args.home or Path(tempfile.mkdtemp(prefix="tlq-ideal-digits-"))
    env = Environment(Settings.load(home=root / "home", environ={}))
    started = time.monotonic()
    backbone = train_digits_model(env, root)
    print(f"model {backbone} trained in {time.monotonic() - started:.0f} s ({root})", flush=True)
    judge = digit_judge()
    rows = {}
    for name, setting in settings.items():
        setting = {k: str(root / "digits") if v == "{digits}" else v for k, v in setting.items()}
        hits, lowest = 0, 1.0
        for seed in args.seeds:
            started = time.monotonic()
            results = render(env, backbone, {"seed": seed, **setting})
            verdicts = judge_images(judge, {c: r["image"] for c, r in results.items()})
            rows.setdefault(name, results)
            print(f"\n{name} {json.dumps(setting)}, seed {seed}: {time.monotonic() - started:.0f} s\n")
            print("| digit | target_prob_png | tv | steps | judge says |\n| --- | --- | --- | --- | --- |")
            for c, r in results.items():
                cells = [f"{r['target_prob_png']:.3f}", f"{r['tv']:.0f}", f"{r['steps_taken']:.0f}", str(verdicts[c])]
                print(f"| {c} | {' | '.join(cells)} ({'yes' if verdicts[c] == c else 'no'}) |")
            hits += sum(verdicts[c] == c for c in results)
            lowest = min(lowest, *(r["target_prob_png"] for r in results.values()))
        summary = f"the judge recognizes {hits} of {10 * len(args.seeds)}; lowest target_prob_png {lowest:.3f}"
        print(f"\n{name}: {summary}", flush=True)
    if args.pictures:
        save_pictures(rows, args.pictures)
        print(f"pictures: {args.pictures}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
