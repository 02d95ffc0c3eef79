"""Artifacts stay inside their job's folder, land atomically, and are recorded with size and digest."""

import hashlib
import os

import pytest

from tlq.errors import BadInput
from tlq.plugins.artifacts import ArtifactStore


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


@pytest.mark.parametrize("name", ["..", "a/..", "./a/../..", "/"])
def test_only_plain_relative_names_are_artifact_names(name):
    from tlq.plugins.artifacts import safe_relative_path

    with pytest.raises(BadInput, match="leave the job's artifact folder|not a plain relative path"):
        safe_relative_path(name)
    assert safe_relative_path("sub/dir/model.safetensors").parts == ("sub", "dir", "model.safetensors")


def test_paths_stay_in_the_job_folder_and_a_link_within_it_is_followed(store, tmp_path):
    artifacts, _ = store
    assert artifacts.path("a/b.txt") == tmp_path / "artifacts" / "7" / "a" / "b.txt"
    (artifacts.dir / "real").mkdir(parents=True)
    os.symlink(artifacts.dir / "real", artifacts.dir / "alias")  # a link that stays inside is fine
    assert artifacts.path("alias/x.txt") == artifacts.dir / "alias" / "x.txt"
    os.symlink(tmp_path, artifacts.dir / "out")
    with pytest.raises(BadInput, match="remove the symlink"):
        artifacts.path("out/x.txt")


def test_large_files_are_recorded_with_the_digest_of_all_their_bytes(store):
    artifacts, records = store
    data = os.urandom(3 * (1 << 20) + 5)  # more than one read
    artifacts.write_bytes("blob", "big.bin", data)
    assert records == [("blob", "7/big.bin", len(data), hashlib.sha256(data).hexdigest())]
    path = artifacts.write_text("note", "note.txt", "naïve")
    assert path.read_bytes() == "naïve".encode() and records[-1][2] == 6


def test_an_attempt_that_lost_its_lease_lands_and_removes_nothing(tmp_path):
    from tlq.plugins.artifacts import ArtifactStore

    records, forgotten, allowed = [], [], [True]

    def before_landing():
        if not allowed[0]:
            raise RuntimeError("lease lost")

    artifacts = ArtifactStore(tmp_path, 3, lambda *r: records.append(r), forgotten.append, before_landing)
    artifacts.write_text("report", "a.txt", "first")
    allowed[0] = False
    with pytest.raises(RuntimeError, match="lease lost"):
        artifacts.write_text("report", "a.txt", "second")
    with pytest.raises(RuntimeError, match="lease lost"):
        artifacts.remove("a.txt")
    assert (artifacts.dir / "a.txt").read_text() == "first" and len(records) == 1 and forgotten == []
    assert sorted(p.name for p in artifacts.dir.iterdir()) == ["a.txt"]  # no temporary left behind
    allowed[0] = True
    artifacts.remove("a.txt")
    artifacts.remove("never-written.txt")  # removing what is not there is no error
    assert not (artifacts.dir / "a.txt").exists() and forgotten == ["3/a.txt", "3/never-written.txt"]


def test_a_figure_is_saved_as_png_and_closed(store):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    artifacts, records = store
    figure = plt.figure()
    plt.plot([0, 1], [1, 0])
    current = plt.figure()  # another figure is pyplot's current one: it must stay open
    path = artifacts.save_figure("plot", "curve.png", figure)
    assert path == artifacts.dir / "curve.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.number not in plt.get_fignums() and records[0][:2] == ("plot", "7/curve.png")
    assert current.number in plt.get_fignums()
    plt.close(current)


def test_a_used_job_folder_is_set_aside_and_an_empty_or_missing_one_is_not(store, monkeypatch):
    import datetime as dt
    import time

    artifacts, _ = store
    assert artifacts.set_aside() is None  # no folder yet
    artifacts.dir.mkdir(parents=True)
    assert artifacts.set_aside() is None and artifacts.dir.is_dir()  # empty: nothing to keep
    artifacts.write_text("report", "old.txt", "from an earlier database")
    monkeypatch.setenv("TZ", "Asia/Kolkata")  # the name carries UTC time whatever the machine's zone
    time.tzset()
    try:
        moved = artifacts.set_aside()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert moved.parent == artifacts.dir.parent and moved.name.startswith("7.set-aside-")
    stamp = dt.datetime.strptime(moved.name.removeprefix("7.set-aside-"), "%Y%m%dT%H%M%S%fZ").replace(tzinfo=dt.UTC)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 3600  # UTC, not UTC+05:30
    assert (moved / "old.txt").read_text() == "from an earlier database" and not artifacts.dir.exists()
    os.symlink(moved, artifacts.dir)  # a link in the folder's place goes aside, not through
    assert artifacts.set_aside() is not None and not os.path.lexists(artifacts.dir)
