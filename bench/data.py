"""Real JPEG files for the benchmarks: photos that ship with scikit-image, and scikit-learn's digits."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "motorcycle_left")


def write_photos(root: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` distinct 500x375 JPEG photos (the size of a Cats vs Dogs image), cut from scikit-image's
    sample photos at random positions and scales."""
    from skimage import data

    root.mkdir(parents=True, exist_ok=True)
    existing = sorted(root.glob("*.jpg"))
    if len(existing) >= count:
        return existing[:count]
    sources = []
    for name in PHOTOS:
        try:
            array = getattr(data, name)()
        except Exception:  # a photo that needs a download (pooch) is skipped
            continue
        if array.ndim == 3 and array.shape[2] >= 3:
            sources.append(Image.fromarray(np.asarray(array[..., :3], dtype=np.uint8)))
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        photo = sources[i % len(sources)]
        w, h = photo.size
        scale = rng.uniform(0.5, 1.0)
        cw, ch = int(w * scale), int(h * scale)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize((500, 375), Image.BICUBIC)
        path = root / f"photo_{i:04d}.jpg"
        image.save(path, quality=90)
        paths.append(path)
    return paths


def write_digits(root: Path, per_class: int, size: int = 224, classes=range(10)) -> Path:
    """scikit-learn's handwritten digits as JPEG files in class folders, ``per_class`` of each digit (the tests'
    ``make_digits``), written once per folder: a later row reuses the same files."""
    from tests.support import make_digits

    marker = root / f".complete-{per_class}-{size}-{'-'.join(map(str, classes))}"
    if not marker.exists():
        shutil.rmtree(root, ignore_errors=True)  # an earlier run's files (other names): each digit only once
        make_digits(root, classes=classes, per_class=per_class, size=size, fmt="jpg", quality=90)
        marker.touch()
    return root


def write_small_pngs(root: Path, count: int, size: int = 32) -> Path:
    """``count`` small PNG files of scikit-learn's digits in ten class folders (a digit repeats every 1,797
    files, each copy shifted by a pixel so no two files are the same)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    marker = root / f".complete-{count}"
    if marker.exists():
        return root
    for i in range(count):
        d = i % len(digits.images)
        folder = root / str(digits.target[d])
        folder.mkdir(parents=True, exist_ok=True)
        array = np.roll((digits.images[d] / 16.0 * 255).astype(np.uint8), i // len(digits.images) % 8, axis=1)
        Image.fromarray(array).resize((size, size), Image.NEAREST).save(folder / f"{i:06d}.png")
    marker.touch()
    return root
