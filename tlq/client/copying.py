"""Copying a job's artifacts out, all or nothing: every copy checked against its recorded sha256, never through a
symbolic link nor over an existing file (``Client.copy_artifacts``)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from tlq.errors import BadInput


def copy_checked(artifacts_dir: Path, job_id: int, artifacts: list[dict[str, Any]], dest: str | Path) -> list[Path]:
    """Copies ``artifacts`` (as ``Client.artifacts`` lists them) of job ``job_id`` into ``dest``; see
    ``Client.copy_artifacts``."""
    root = artifacts_dir.resolve()
    dest = Path(os.path.abspath(Path(dest).expanduser()))
    job_root = root / str(job_id)  # where the job's ArtifactStore writes
    if Path(os.path.realpath(dest)).is_relative_to(job_root):
        raise BadInput(f"--copy-to {dest} lies inside job {job_id}'s own artifacts; copy them somewhere else")
    plan: dict[Path, tuple[Path, dict[str, Any]]] = {}
    for artifact in artifacts:
        source = (root / artifact["relative"]).resolve()
        if not source.is_relative_to(root):
            raise BadInput(f"artifact {artifact['relative']} lies outside the artifacts directory; not copied")
        if not source.is_file():
            raise BadInput(f"artifact {source} is missing; it was deleted after job {job_id} wrote it")
        inside = source.relative_to(job_root) if source.is_relative_to(job_root) else Path(source.name)
        if inside in plan:
            raise BadInput(f"two artifacts of job {job_id} would both be copied to {dest / inside}; nothing was copied")
        plan[inside] = (source, artifact)
    for inside in plan:  # the same checks _NewFiles makes as it goes, here to fail before writing anything
        _check_free(dest, inside)
    with _NewFiles(dest) as new:
        for inside, (source, artifact) in plan.items():
            digest = new.copy(source, inside)
            if digest != artifact["sha256"]:
                raise BadInput(
                    f"{source} no longer matches the digest recorded when job {job_id} wrote it; nothing was copied"
                )
    return [dest / inside for inside in plan]


def _check_free(dest: Path, inside: Path) -> None:
    """Refuses a copy to ``dest / inside`` that would go through a symbolic link or over an existing file."""
    path = dest
    for part in inside.parts:
        path = path / part
        if os.path.islink(path):
            raise BadInput(f"{path} is a symbolic link; tlq never copies through one (nothing was copied)")
    if os.path.lexists(path):
        raise BadInput(f"{path} already exists; copy into an empty folder (nothing was copied)")


class _NewFiles:
    """Creates folders and files under one destination without following a symbolic link there or replacing
    anything, and removes all it created when the ``with`` block fails.

    Every step goes through an open descriptor of the folder above (``dir_fd``) with ``O_NOFOLLOW``, and files
    are created with ``O_EXCL``, so a link planted after the checks (even a dangling one) makes the copy fail
    instead of writing where it points.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        self.folders: dict[tuple[str, ...], int] = {}  # parts below ``base`` -> open descriptor
        self.created: list[tuple[int, str, bool]] = []  # (folder descriptor, name, is a folder)

    def __enter__(self) -> _NewFiles:
        self.base = self.dest
        while not os.path.lexists(self.base) and self.base != self.base.parent:
            self.base = self.base.parent
        try:
            self.folders[()] = os.open(self.base, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            what = "a symbolic link to nothing" if os.path.islink(self.base) else f"not a folder ({exc.strerror})"
            raise BadInput(f"--copy-to: {self.base} is {what}; name a folder") from exc
        return self

    def __exit__(self, failed, *exc) -> None:
        if failed is not None:
            for folder, name, is_folder in reversed(self.created):
                try:
                    os.rmdir(name, dir_fd=folder) if is_folder else os.unlink(name, dir_fd=folder)
                except OSError:
                    pass  # a folder someone else filled meanwhile stays
        for descriptor in self.folders.values():
            os.close(descriptor)

    def copy(self, source: Path, inside: Path) -> str:
        """Copies ``source`` to ``dest / inside``, a file it creates; returns the sha256 of the bytes written."""
        parts = self.dest.relative_to(self.base).parts + inside.parts
        target = self.base.joinpath(*parts)
        folder = self._folder(parts[:-1])
        digest = hashlib.sha256()
        try:
            out = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666, dir_fd=folder)
        except FileExistsError as exc:
            raise BadInput(f"{target} already exists; copy into an empty folder (nothing was copied)") from exc
        except OSError as exc:
            raise BadInput(f"cannot create {target} ({exc.strerror}); nothing was copied") from exc
        self.created.append((folder, parts[-1], False))
        try:
            with open(out, "wb") as written, source.open("rb") as read:
                for block in iter(lambda: read.read(1 << 20), b""):
                    digest.update(block)
                    written.write(block)
        except OSError as exc:
            raise BadInput(f"cannot copy {source} to {target} ({exc.strerror}); nothing was copied") from exc
        return digest.hexdigest()

    def _folder(self, parts: tuple[str, ...]) -> int:
        """An open descriptor of the folder ``base / parts``, made where missing; never through a link."""
        if parts in self.folders:
            return self.folders[parts]
        above = self._folder(parts[:-1])
        path = self.base.joinpath(*parts)
        try:
            os.mkdir(parts[-1], dir_fd=above)
            self.created.append((above, parts[-1], True))
        except FileExistsError:
            pass
        except OSError as exc:
            raise BadInput(f"cannot create the folder {path} ({exc.strerror}); nothing was copied") from exc
        try:
            self.folders[parts] = os.open(parts[-1], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=above)
        except OSError as exc:
            what = "a symbolic link" if os.path.islink(path) else "not a folder"
            raise BadInput(f"{path} is {what}; tlq never copies through one (nothing was copied)") from exc
        return self.folders[parts]
