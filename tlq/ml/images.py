"""Finding image files under a folder and decoding them safely.

Every file is a candidate; one that cannot be decoded (empty, truncated, not an image, a decompression bomb)
is skipped with its reason, never a crash. Grayscale, 16-bit, palette, RGBA and CMYK images become RGB.
"""

from __future__ import annotations

import os
import re
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
    """A candidate image: its absolute path, its path relative to the data root, and its label if any.

    ``problem`` is set on a folder the walk did not read, or a symlink loop (see ``discover_files``): it is
    listed, so that the tasks skip it with this reason like any unreadable file, instead of it vanishing.
    """

    path: Path
    rel: str
    label: str | None
    problem: str | None = None


def safe_name(path: str | os.PathLike) -> str:
    """A printable form of a path, also when its bytes are not valid UTF-8."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


READ_ALREADY = "a folder read already through another path (a symlink loop or a second link to it); not followed"


def folder_problem(path: str | os.PathLike) -> str:
    """Why a folder listed among the files was not read: it cannot be listed, or it was read already."""
    try:
        with os.scandir(path):
            pass
    except OSError as exc:
        return f"a folder tlq cannot list ({exc.strerror or exc}); fix its permissions or remove it"
    return READ_ALREADY


def discover_files(root: Path) -> list[ImageFile]:
    """Every regular, non-hidden file under ``root``, in sorted depth-first order, labelled by its top-level folder.

    Folder symlinks are followed wherever they point, class folders included: whoever submits a job already
    names any folder they like as --data, so a link reaches nothing they could not; and data sets are often
    assembled from links to folders elsewhere. Each real folder is read once, at the first path that reaches it,
    which ends symlink loops (a link to a folder above it) and the blow-up of links to links. A folder that is
    not read (read already, or not listable) and a symlink loop are listed with their ``problem``, and so land in
    the job's skipped.csv with the reason rather than disappearing. File symlinks are followed; a broken one
    becomes a file that will be skipped as unreadable.
    """
    root = Path(root)
    found: list[ImageFile] = []
    seen = {os.path.realpath(root)}
    pending = [root]  # a stack, so that no depth of folders can exhaust Python's recursion limit
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted((e for e in listing if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError:
            if folder != root:  # an unreadable root is reported by the caller as an empty data folder
                found.append(_entry(root, folder, folder_problem(folder)))
            continue
        folders = []
        for entry in entries:
            path = Path(entry.path)
            try:
                is_folder = entry.is_dir()  # follows a symlink
            except OSError as exc:  # a symlink loop (ELOOP) and the like
                found.append(_entry(root, path, f"cannot read ({exc.strerror or exc})"))
                continue
            if not is_folder:
                found.append(_entry(root, path))
                continue
            real = os.path.realpath(path)
            if real in seen:
                found.append(_entry(root, path, READ_ALREADY))
                continue
            seen.add(real)  # when listed, so a real folder wins over a link to it from deeper down
            folders.append(path)
        pending.extend(reversed(folders))  # depth-first, in name order, as os.walk goes
    return found


def _entry(root: Path, path: Path, problem: str | None = None) -> ImageFile:
    rel = path.relative_to(root)
    # A file is labelled by the class folder it sits in; an entry that was not read, by itself or the one above.
    label = rel.parts[0] if len(rel.parts) > 1 or problem else None
    return ImageFile(path, safe_name(rel.as_posix()), label and safe_name(label), problem)


def looks_like_image(path: Path) -> bool:
    """A cheap test by suffix, for submit-time checks that must not decode whole folders."""
    return path.suffix.lower() in IMAGE_SUFFIXES


def load_rgb(path: Path) -> Image.Image:
    """Decodes ``path`` fully into an 8-bit RGB image.

    Raises:
        UnreadableImage: The file is empty, missing, not an image, truncated, or too large to be safe.
    """
    try:
        if os.path.isdir(path):
            raise UnreadableImage(folder_problem(path))
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
        # PIL: "Image size (100000000 pixels) exceeds limit of 89478485 pixels, could be decompression bomb ..."
        sizes = re.findall(r"\d+", str(exc.args[0]))[:2]
        told = f" ({sizes[0]} pixels, over {sizes[1]})" if len(sizes) == 2 else ""
        raise UnreadableImage(f"too many pixels to decode safely{told}") from exc
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
