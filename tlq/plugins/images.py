"""Finding image files under a folder and decoding them safely.

Every file is a candidate; one that cannot be decoded (empty, truncated, not an image, a decompression bomb)
is skipped with its reason, never a crash. Grayscale, 16-bit, palette, RGBA and CMYK images become RGB.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"})


class UnreadableImage(Exception):
    """A file that is not a decodable image; ``str()`` says why in a few words."""


@dataclass(frozen=True)
class ImageFile:
    """A candidate image: its absolute path, its path relative to the data root, and its label if any."""

    path: Path
    rel: str
    label: str | None


def safe_name(path: str | os.PathLike) -> str:
    """A printable form of a path, also when its bytes are not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def discover_files(root: Path) -> list[ImageFile]:
    """Every regular, non-hidden file under ``root``, sorted, labelled by its top-level folder.

    Folder symlinks are not followed (no loops); file symlinks are, and a broken one becomes a file that will
    be skipped as unreadable.
    """
    root = Path(root)
    found: list[ImageFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for filename in sorted(filenames):
            if filename.startswith("."):
                continue
            path = Path(dirpath) / filename
            rel = path.relative_to(root)
            label = rel.parts[0] if len(rel.parts) > 1 else None
            found.append(ImageFile(path=path, rel=safe_name(rel.as_posix()), label=label and safe_name(label)))
    return found


def looks_like_image(path: Path) -> bool:
    """A cheap test by suffix, for submit-time checks that must not decode whole folders."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: Path) -> Image.Image:
    """Decodes ``path`` fully into an 8-bit RGB image.

    Raises:
        UnreadableImage: The file is empty, missing, not an image, truncated, or too large to be safe.
    """
    try:
        if os.path.getsize(path) == 0:
            raise UnreadableImage("empty file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                img = ImageOps.exif_transpose(img)
                return to_rgb(img)
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(f"too many pixels to decode safely ({exc.args[0].split('(')[0].strip()})") from exc
    except UnidentifiedImageError as exc:
        raise UnreadableImage("not an image") from exc
    except OSError as exc:
        message = str(exc).lower()
        if "truncated" in message:
            raise UnreadableImage("truncated image") from exc
        raise UnreadableImage(f"cannot read ({exc.strerror or exc})") from exc
    except (ValueError, SyntaxError, MemoryError) as exc:
        raise UnreadableImage(f"cannot decode ({exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Converts any PIL mode to 8-bit RGB; transparency is composited onto white."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(img, dtype=np.float64)
        high = 65535.0 if img.mode.startswith("I;16") or array.max(initial=0) > 255 else 255.0
        array = np.clip(array / high * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, mode="L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
