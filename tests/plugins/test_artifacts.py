"""Artifacts stay inside their job's folder, land atomically, and are recorded with size and digest."""

import hashlib
import os

import pytest

from tlq.plugins.artifacts import ArtifactStore
from tlq.plugins.errors import BadInput


@pytest.fixture
def store(tmp_path):
    records = []
    return ArtifactStore(tmp_path / "artifacts", 7, lambda *row: records.append(row)), records


def test_written_files_are_recorded_with_size_and_sha256(store):
    artifacts, records = store
    path = artifacts.write_text("report", "sub/report.txt", "hello")
    assert path.read_text() == "hello"
    assert records == [("report", "7/sub/report.txt", 5, hashlib.sha256(b"hello").hexdigest())]
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


@pytest.mark.parametrize("name", ["../8/steal.txt", "/etc/passwd", "a/../../x", "", "a\\..\\b", "nul\x00.txt"])
def test_names_that_leave_the_folder_are_refused(store, name):
    artifacts, records = store
    with pytest.raises(BadInput):
        artifacts.write_text("x", name, "data")
    assert records == []


def test_a_symlink_leading_out_is_refused(store, tmp_path):
    artifacts, records = store
    outside = tmp_path / "outside"
    outside.mkdir()
    artifacts.dir.mkdir(parents=True)
    os.symlink(outside, artifacts.dir / "link")
    with pytest.raises(BadInput, match="outside"):
        artifacts.write_text("x", "link/file.txt", "data")
    assert list(outside.iterdir()) == [] and records == []


def test_a_failed_write_leaves_no_partial_file_and_names_the_artifact(store):
    artifacts, records = store
    with pytest.raises(OSError, match="could not write artifact big.bin"):
        with artifacts.target("blob", "big.bin") as tmp:
            tmp.write_bytes(b"partial")
            raise OSError(28, "No space left on device")
    assert not (artifacts.dir / "big.bin").exists()
    assert [p.name for p in artifacts.dir.iterdir()] == [] and records == []
