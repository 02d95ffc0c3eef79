"""Files a job writes: always inside the job's own folder, written to a temporary name and then renamed."""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from tlq.errors import BadInput

RecordArtifact = Callable[[str, str, int, str], None]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def safe_relative_path(name: str) -> PurePosixPath:
    """Checks an artifact name: relative, no ``..``, no NUL; raises BadInput otherwise."""
    if not name or "\x00" in name or "\\" in name:
        raise BadInput(f"artifact name {name!r} is not a plain relative path; use a name such as 'features.npy'")
    rel = PurePosixPath(name)
    if rel.is_absolute() or any(part in ("..", "") for part in rel.parts):
        raise BadInput(f"artifact name {name!r} would leave the job's artifact folder; use a name inside it")
    return rel


class ArtifactStore:
    """The artifact folder of one job (``<artifacts_dir>/<job id>/``).

    Args:
        root: The artifacts directory shared by all jobs.
        job_id: The job whose folder this is.
        record: Called with (kind, path relative to ``root``, bytes, sha256) after each file lands.
        forget: Called with the relative path of a removed artifact.
        before_landing: Called just before a file is renamed into place (or removed); raises to stop it (a
            job whose attempt lost its lease must not overwrite the new holder's files).
    """

    def __init__(
        self,
        root: Path,
        job_id: int,
        record: RecordArtifact,
        forget: Callable[[str], None] | None = None,
        before_landing: Callable[[], None] | None = None,
    ) -> None:
        self.root = Path(root)
        self.job_id = job_id
        self.dir = self.root / str(job_id)
        self._record = record
        self._forget = forget
        self._before_landing = before_landing

    def path(self, name: str) -> Path:
        """The absolute path of artifact ``name``, checked to stay inside the job's folder (symlinks too)."""
        rel = safe_relative_path(name)
        target = self.dir / Path(*rel.parts)
        real_dir = self.dir.resolve()
        if not target.parent.resolve().is_relative_to(real_dir) and target.parent.exists():
            raise BadInput(f"artifact {name!r} resolves outside {self.dir}; remove the symlink that leads out")
        return target

    @contextlib.contextmanager
    def target(self, kind: str, name: str) -> Iterator[Path]:
        """Yields a temporary path to write; on success it is renamed to ``name`` and recorded.

        Libraries that write to a path (numpy, safetensors, matplotlib) write to the yielded path. On any
        error the temporary file is removed and the error propagates with the artifact named.
        """
        final = self.path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        if not final.parent.resolve().is_relative_to(self.dir.resolve()):
            raise BadInput(f"artifact {name!r} resolves outside {self.dir}; remove the symlink that leads out")
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}{final.suffix}")
        try:
            yield tmp
            if self._before_landing is not None:
                self._before_landing()
            os.replace(tmp, final)
        except OSError as exc:
            raise OSError(exc.errno, f"could not write artifact {name} ({exc.strerror or exc})") from exc
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self._record(kind, final.relative_to(self.root).as_posix(), final.stat().st_size, sha256_of(final))

    def set_aside(self) -> Path | None:
        """Moves a non-empty job folder aside (to ``<job id>.set-aside-<UTC time>``) and returns where; None when
        there was nothing to move.

        A symbolic link (or a file) in the folder's place goes aside too, even a link to an empty or missing
        folder: the job would otherwise write through it, outside the artifacts directory, or fail.
        """
        import datetime as dt

        if not os.path.lexists(self.dir):
            return None
        if self.dir.is_dir() and not self.dir.is_symlink() and not any(self.dir.iterdir()):
            return None
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
        target = self.dir.with_name(f"{self.dir.name}.set-aside-{stamp}")
        os.rename(self.dir, target)
        return target

    def remove(self, name: str) -> None:
        """Deletes an artifact file and its record (a checkpoint once the model is saved, say)."""
        path = self.path(name)
        if self._before_landing is not None:
            self._before_landing()
        path.unlink(missing_ok=True)
        if self._forget is not None:
            self._forget(path.relative_to(self.root).as_posix())

    def write_bytes(self, kind: str, name: str, data: bytes) -> Path:
        with self.target(kind, name) as tmp:
            tmp.write_bytes(data)
        return self.path(name)

    def write_text(self, kind: str, name: str, text: str) -> Path:
        return self.write_bytes(kind, name, text.encode("utf-8"))

    def save_figure(self, kind: str, name: str, figure) -> Path:
        """Saves a matplotlib figure as PNG and closes it."""
        import matplotlib.pyplot as plt

        with self.target(kind, name) as tmp:
            figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(figure)
        return self.path(name)
