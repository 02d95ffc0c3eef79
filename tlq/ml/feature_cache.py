"""Features already computed, kept on disk: keyed by backbone, weights digest, preprocessing, precision and
the image file's content, so a linear probe, a feature-extract or a predict over images seen before skips
the forward pass. Size-bounded (least recently used go first) and safe to delete at any time."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from pathlib import Path

import numpy as np


def file_digest(path: Path) -> str | None:
    """sha256 of a file's bytes; None when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    except OSError:
        return None
    return digest.hexdigest()


def file_version(path: Path) -> str | None:
    """What tells one version of a file from another without reading it; None when it cannot be stat'ed.

    Size and modification time are not enough: same-architecture weights have the same size, and ``cp -p``,
    ``rsync -t``, ``touch -r`` or unpacking an archive give new bytes an old mtime. The change time (ctime) is
    set by the kernel on every write, rename or utime and cannot be set back, and a new file has a new inode.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return f"{stat.st_dev}:{stat.st_ino}:{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ctime_ns}"


class FeatureCache:
    """A SQLite file of feature vectors.

    Args:
        path: The cache file (default ``TLQ_HOME/cache/features.sqlite``).
        max_bytes: Size bound of the stored vectors; 0 disables the cache.
    """

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self._conn: sqlite3.Connection | None = None

    @classmethod
    def for_home(cls, home: Path, megabytes: float) -> FeatureCache:
        """The cache under ``home``, bounded to ``megabytes`` (``Settings.feature_cache_mb``); 0 turns it off."""
        return cls(Path(home) / "cache" / "features.sqlite", int(megabytes * 2**20))

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS features (model TEXT, image TEXT, dim INTEGER, vector BLOB, "
                "used REAL, PRIMARY KEY (model, image))"
            )
            conn.execute("CREATE INDEX IF NOT EXISTS features_used ON features (used)")
            conn.execute("CREATE TABLE IF NOT EXISTS weight_digests (path TEXT PRIMARY KEY, version TEXT, sha256 TEXT)")
            self._conn = conn
        return self._conn

    def weights_digest(self, path: Path) -> str | None:
        """sha256 of a weights file, computed once per file version (``file_version``)."""
        version = file_version(path)
        if version is None:
            return None
        key = (str(path), version)
        row = self._db().execute("SELECT sha256 FROM weight_digests WHERE path=? AND version=?", key).fetchone()
        if row:
            return row[0]
        digest = file_digest(path)
        if digest and file_version(path) == version:  # a file changed while it was read is hashed again next time
            self._db().execute("INSERT OR REPLACE INTO weight_digests VALUES (?, ?, ?)", (*key, digest))
        return digest

    @staticmethod
    def model_key(**parts) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()

    def lookup(self, model: str, images: list[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        db = self._db()
        for start in range(0, len(images), 500):
            chunk = images[start : start + 500]
            marks = ",".join("?" * len(chunk))
            for image, dim, vector in db.execute(
                f"SELECT image, dim, vector FROM features WHERE model=? AND image IN ({marks})", (model, *chunk)
            ):
                found[image] = np.frombuffer(vector, dtype=np.float32, count=dim).copy()
        if found:
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "UPDATE features SET used=? WHERE model=? AND image=?", [(time.time(), model, i) for i in found]
            )
            db.execute("COMMIT")
        return found

    def store(self, model: str, vectors: dict[str, np.ndarray]) -> None:
        if not vectors:
            return
        db = self._db()
        now = time.time()
        rows = [
            (model, image, int(v.shape[0]), np.asarray(v, dtype=np.float32).tobytes(), now)
            for image, v in vectors.items()
        ]
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?, ?, ?, ?)", rows)
        db.execute("COMMIT")
        self.evict()

    def size_bytes(self) -> int:
        return int(self._db().execute("SELECT coalesce(sum(length(vector)), 0) FROM features").fetchone()[0])

    def evict(self) -> None:
        """Drops the least recently used vectors until the cache is within its bound."""
        excess = self.size_bytes() - self.max_bytes
        if excess <= 0:
            return
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        freed = 0
        for model, image, size in db.execute(
            "SELECT model, image, length(vector) FROM features ORDER BY used"
        ).fetchall():
            if freed >= excess:
                break
            db.execute("DELETE FROM features WHERE model=? AND image=?", (model, image))
            freed += size
        db.execute("COMMIT")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
