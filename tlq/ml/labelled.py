"""Labelled image sets for training: an ImageFolder tree, a CSV manifest, or a flat folder whose labels
come from the file names (``--label-pattern``), plus a stratified, seeded validation split.

Nothing here decodes images or imports torch, so the checks at submit stay fast.
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tlq.errors import BadInput
from tlq.ml.images import ImageFile, discover_files, looks_like_image, safe_name

PATH_COLUMNS = ("path", "filepath", "file", "filename", "image")
LABEL_COLUMNS = ("label", "class", "target", "category")


@dataclass
class LabelledFiles:
    """Image files with a label each, and the files that could not be given one (with the reason)."""

    files: list[ImageFile]
    unlabelled: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labels(self) -> list[str]:
        return [f.label for f in self.files]

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.labels), key=natural_key)

    def counts(self) -> Counter:
        return Counter(self.labels)


def natural_key(text: str):
    """Sorts "2" before "10" and "cat" before "dog"."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


def compile_pattern(pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise BadInput(f"--label-pattern {pattern!r} is not a valid regular expression ({exc})") from exc


def check_label_pattern(pattern: str | None) -> None:
    """For a params model's validator: a pattern that does not compile raises ValueError with the one-line fix."""
    if pattern is not None:
        try:
            compile_pattern(pattern)
        except BadInput as exc:
            raise ValueError(str(exc)) from exc


def label_from_name(regex: re.Pattern, image: ImageFile) -> str | None:
    """The label ``--label-pattern`` gives a file: the first group of its match on the file name (else on the path
    under the data folder), the whole match for a pattern without groups; None when neither matches, or the
    label would be empty (an optional group that took no part, ``^(.*)_`` on ``_1.jpg``)."""
    match = regex.match(image.path.name) or regex.match(image.rel)
    if match is None:
        return None
    return (match.group(1) if regex.groups else match.group(0)) or None


def load_labelled(source: Path, label_pattern: str | None = None) -> LabelledFiles:
    """Reads a labelled image set from a folder (class subfolders or ``label_pattern``) or a CSV manifest."""
    source = Path(source)
    if source.is_file():
        return _from_manifest(source)
    found = discover_files(source)
    # Folders the walk did not read (a symlink loop, no permission) are no class: they go to skipped.csv.
    files = [f for f in found if f.problem is None]
    unreadable = [(f.rel, f.problem) for f in found if f.problem is not None]
    if label_pattern:
        regex = compile_pattern(label_pattern)
        labelled, unlabelled = [], unreadable
        for f in files:
            label = label_from_name(regex, f)
            if label is None:
                unlabelled.append((f.rel, "name does not match --label-pattern"))
                continue
            labelled.append(ImageFile(f.path, f.rel, label))
        return LabelledFiles(labelled, unlabelled)
    labelled = [f for f in files if f.label is not None]
    unlabelled = [(f.rel, "not inside a class folder") for f in files if f.label is None]
    return LabelledFiles(labelled, unreadable + unlabelled)


def _from_manifest(path: Path) -> LabelledFiles:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = {name.strip().lower(): name for name in reader.fieldnames or []}
            path_col = next((header[c] for c in PATH_COLUMNS if c in header), None)
            label_col = next((header[c] for c in LABEL_COLUMNS if c in header), None)
            if path_col is None or label_col is None:
                raise BadInput(
                    f"manifest {path.name} needs a header with a path and a label column (path,label); "
                    f"found {', '.join(reader.fieldnames or []) or 'no header'}"
                )
            rows = list(reader)
    except UnicodeDecodeError as exc:
        raise BadInput(f"manifest {path.name} is not UTF-8 text; save it as a UTF-8 CSV with path,label") from exc
    files, unlabelled = [], []
    for row in rows:
        rel = (row.get(path_col) or "").strip()
        label = (row.get(label_col) or "").strip()
        if not rel:
            continue
        file_path = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not label:
            unlabelled.append((rel, "no label in the manifest"))
            continue
        files.append(ImageFile(file_path, safe_name(rel), label))
    return LabelledFiles(files, unlabelled)


def check_trainable(labelled: LabelledFiles, source: Path, what: str = "--data") -> None:
    """Rejects sets that cannot train a classifier: fewer than 2 classes, or a class with no image file."""
    if not labelled.files:
        reason = f" ({labelled.unlabelled[0][1]})" if labelled.unlabelled else ""
        raise BadInput(
            f"{what} {source} holds no labelled images{reason}; use class subfolders (PetImages/Cat, "
            "PetImages/Dog), a CSV manifest (path,label), or --label-pattern for labels in file names"
        )
    classes = labelled.classes
    if len(classes) < 2:
        raise BadInput(f"{what} {source} has one class ({classes[0]}); a classifier needs at least 2 classes")
    usable = Counter(
        f.label for f in labelled.files if looks_like_image(f.path) and f.path.is_file() and f.path.stat().st_size > 0
    )
    empty = [c for c in classes if usable[c] == 0]
    if empty:
        raise BadInput(f"class {empty[0]!r} in {what} {source} has no usable image file; add images or remove it")


def load_trainable(source: Path, label_pattern: str | None = None) -> LabelledFiles:
    """``load_labelled``, then refused in one line where it cannot train (or score) a classifier: a label pattern
    that matches no file name, fewer than 2 classes, a class without an image file."""
    labelled = load_labelled(source, label_pattern)
    if label_pattern and not labelled.files:
        raise BadInput(
            f"--label-pattern {label_pattern!r} matches none of the {len(labelled.unlabelled)} files under "
            f"{source}; test it on a file name, e.g. '^(.+)_\\d+\\.jpg$' for Abyssinian_12.jpg"
        )
    check_trainable(labelled, source)
    return labelled


def stratified_split(labels: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and validation indices: ``fraction`` of each class (at least one image once it has two), chosen
    by ``seed``; the same seed gives the same split."""
    by_class: dict[str, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class, key=natural_key):
        indices = by_class[label][:]
        rng.shuffle(indices)
        n_val = 0 if len(indices) < 2 else min(len(indices) - 1, max(1, round(len(indices) * fraction)))
        val.extend(indices[:n_val])
        train.extend(indices[n_val:])
    return sorted(train), sorted(val)
