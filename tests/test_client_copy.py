"""`Client.copy_artifacts` (what `tlq artifacts --copy-to` runs): every file of a job copied with its folders and
checked against its recorded digest, all or nothing, never over a file and never through a link. One database
for the module; each test copies into folders of its own. tests/cli/test_results_cli.py runs the same through
the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support import tree
from tlq.client import Client
from tlq.client.copying import _NewFiles
from tlq.config import Settings
from tlq.db import queries
from tlq.errors import BadInput


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    home = tmp_path_factory.mktemp("copy-home")
    client = Client(settings=Settings.load(home=home, environ={}))
    client.env.db.ensure_schema()
    yield client
    client.env.db.dispose()


def job_with(client: Client, files: dict[str, str], kind: str = "note", recorded: dict[str, str] | None = None) -> int:
    """A job whose artifacts are ``files`` (path inside its folder -> text), recorded with their digests (or with
    the text of ``recorded`` instead, for a file changed after the job wrote it)."""
    with client.env.db.session() as session:
        job_id = queries.create_job(session, task="feature-extract", params={}).id
        for rel, text in files.items():
            path = client.settings.artifacts_dir / str(job_id) / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            digest = hashlib.sha256((recorded or {}).get(rel, text).encode()).hexdigest()
            queries.record_artifact(session, job_id, kind, f"{job_id}/{rel}", len(text), digest)
    return job_id


def test_every_artifact_is_copied_with_its_folders(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA", "b/c/y.txt": "BBB", "top.txt": "T"})
    out = tmp_path / "out" / "new"  # folders that do not exist yet are made
    copied = client.copy_artifacts(job, out)
    assert copied == [out / "a" / "x.txt", out / "b" / "c" / "y.txt", out / "top.txt"]
    assert tree(out) == {"a": "/", "a/x.txt": "AAA", "b": "/", "b/c": "/", "b/c/y.txt": "BBB", "top.txt": "T"}
    assert client.copy_artifacts(job, tmp_path / "kinds", kind="note") != []
    with pytest.raises(BadInput, match="no 'model' artifact; its kinds are note"):
        client.copy_artifacts(job, tmp_path / "none", kind="model")
    assert not (tmp_path / "none").exists()


def test_a_relative_or_home_destination_is_made_absolute(client, tmp_path, monkeypatch):
    job = job_with(client, {"r.txt": "R"})
    monkeypatch.chdir(tmp_path)
    assert client.copy_artifacts(job, "rel") == [tmp_path / "rel" / "r.txt"]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert client.copy_artifacts(job, "~/copies") == [tmp_path / "home" / "copies" / "r.txt"]


def test_a_copy_into_an_existing_folder_keeps_what_is_there_and_refuses_to_overwrite(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA"})
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "mine.txt").write_text("mine")
    client.copy_artifacts(job, out)
    assert tree(out) == {"a": "/", "a/x.txt": "AAA", "mine.txt": "mine"}
    with pytest.raises(BadInput, match=f"{out / 'a' / 'x.txt'} already exists; copy into an empty folder"):
        client.copy_artifacts(job, out)
    assert tree(out) == {"a": "/", "a/x.txt": "AAA", "mine.txt": "mine"}


def test_a_changed_artifact_fails_the_copy_and_removes_what_it_had_copied(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA", "b/y.txt": "BBX"}, recorded={"b/y.txt": "BBB"})
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(
        BadInput, match="no longer matches the digest recorded when job .* wrote it; nothing was copied"
    ):
        client.copy_artifacts(job, out)
    assert tree(out) == {"keep.txt": "mine"}  # a/x.txt and its folder were made, then removed
    deeper = tmp_path / "new" / "deeper"
    with pytest.raises(BadInput):
        client.copy_artifacts(job, deeper)
    assert not (tmp_path / "new").exists()


def test_a_link_on_the_way_is_refused_before_anything_is_written(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA", "b/y.txt": "BBB"})
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "b").mkdir(parents=True)
    (out / "b" / "y.txt").symlink_to(elsewhere / "pwned.txt")  # dangling: exists() says nothing is there
    with pytest.raises(BadInput, match=f"{out / 'b' / 'y.txt'} is a symbolic link; tlq never copies through one"):
        client.copy_artifacts(job, out)
    assert tree(out) == {"b": "/", "b/y.txt": f"-> {elsewhere / 'pwned.txt'}"} and list(elsewhere.iterdir()) == []
    (out / "b" / "y.txt").unlink()
    (out / "b").rmdir()
    (out / "a").symlink_to(elsewhere)  # a folder on the way
    with pytest.raises(BadInput, match=f"{out / 'a'} is a symbolic link"):
        client.copy_artifacts(job, out)
    assert list(elsewhere.iterdir()) == []


def test_a_destination_that_is_a_file_or_a_dangling_link_is_refused(client, tmp_path):
    job = job_with(client, {"x.txt": "X"})
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(BadInput, match="is not a folder"):
        client.copy_artifacts(job, tmp_path / "file")
    with pytest.raises(BadInput, match="is not a folder|cannot create"):
        client.copy_artifacts(job, tmp_path / "file" / "below")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(BadInput, match="a symbolic link to nothing; name a folder"):
        client.copy_artifacts(job, tmp_path / "dangling")
    assert (tmp_path / "file").read_text() == "not a folder" and not (tmp_path / "nowhere").exists()
    (tmp_path / "real").mkdir()
    (tmp_path / "chosen").symlink_to(tmp_path / "real")  # a link the caller names as the destination is followed
    assert client.copy_artifacts(job, tmp_path / "chosen") == [tmp_path / "chosen" / "x.txt"]
    assert (tmp_path / "real" / "x.txt").read_text() == "X"


def test_a_copy_into_the_jobs_own_folder_is_refused(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA"})
    job_dir = client.settings.artifacts_dir / str(job)
    for dest in (job_dir, job_dir / "a", job_dir / "new"):
        with pytest.raises(BadInput, match=f"lies inside job {job}'s own artifacts"):
            client.copy_artifacts(job, dest)
    (tmp_path / "via").symlink_to(job_dir)
    with pytest.raises(BadInput, match="own artifacts"):
        client.copy_artifacts(job, tmp_path / "via")
    assert tree(job_dir) == {"a": "/", "a/x.txt": "AAA"}
    other = job_with(client, {"b.txt": "B"})  # another job's folder is just a folder
    assert client.copy_artifacts(other, job_dir / "from-other") == [job_dir / "from-other" / "b.txt"]


def test_artifacts_that_are_missing_or_recorded_outside_are_refused(client, tmp_path):
    job = job_with(client, {"a.txt": "A", "b.txt": "B"})
    (client.settings.artifacts_dir / str(job) / "b.txt").unlink()
    with pytest.raises(BadInput, match=f"b.txt is missing; it was deleted after job {job} wrote it"):
        client.copy_artifacts(job, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    outside = job_with(client, {})
    with client.env.db.session() as session:
        queries.record_artifact(session, outside, "note", "../secret.txt", 1, "0" * 64)
    (client.settings.artifacts_dir.parent / "secret.txt").write_text("s")
    with pytest.raises(BadInput, match="lies outside the artifacts directory; not copied"):
        client.copy_artifacts(outside, tmp_path / "out2")


def test_artifacts_of_a_job_written_elsewhere_are_copied_by_name_and_never_two_to_one_place(client, tmp_path):
    job = job_with(client, {"x.txt": "X"})
    other = job_with(client, {"x.txt": "Y", "y.txt": "Z"})
    with client.env.db.session() as session:  # a job that recorded files of another job's folder (job:ID models)
        queries.record_artifact(session, job, "model", f"{other}/y.txt", 1, hashlib.sha256(b"Z").hexdigest())
    assert client.copy_artifacts(job, tmp_path / "ok") == [tmp_path / "ok" / "x.txt", tmp_path / "ok" / "y.txt"]
    with client.env.db.session() as session:
        queries.record_artifact(session, job, "model", f"{other}/x.txt", 1, hashlib.sha256(b"Y").hexdigest())
    with pytest.raises(BadInput, match="would both be copied to .*x.txt; nothing was copied"):
        client.copy_artifacts(job, tmp_path / "clash")
    assert not (tmp_path / "clash").exists()


def test_new_files_never_follow_a_link_planted_after_the_checks(tmp_path):
    source = tmp_path / "model.txt"
    source.write_text("weights")
    out = tmp_path / "out"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    raced = out / "sub" / "deeper" / "raced.txt"
    with pytest.raises(BadInput, match=f"^{raced} already exists"):
        with _NewFiles(out) as new:
            assert new.copy(source, Path("first.txt")) == hashlib.sha256(b"weights").hexdigest()
            assert new.copy(source, Path("sub/deeper/model.txt")) == hashlib.sha256(b"weights").hexdigest()
            (out / "sub" / "deeper" / "raced.txt").symlink_to(elsewhere / "pwned.txt")  # as if raced in
            new.copy(source, Path("sub/deeper/raced.txt"))
    assert not (elsewhere / "pwned.txt").exists()
    # what this copy made is gone again; the planted link, in a folder it made, keeps that folder
    assert tree(out) == {"sub": "/", "sub/deeper": "/", "sub/deeper/raced.txt": f"-> {elsewhere / 'pwned.txt'}"}
    with pytest.raises(BadInput, match="is a symbolic link"):
        with _NewFiles(out) as new:
            (out / "deep").symlink_to(elsewhere)
            new.copy(source, Path("deep/model.txt"))
    assert list(elsewhere.iterdir()) == []
    with _NewFiles(out) as new:  # a success keeps everything, and reading a source that vanished says so
        new.copy(source, Path("kept/model.txt"))
        with pytest.raises(BadInput, match="cannot copy .*gone.txt"):
            new.copy(tmp_path / "gone.txt", Path("kept/gone.txt"))
    assert (out / "kept" / "model.txt").read_text() == "weights"


def test_copies_are_plain_files_and_a_file_in_place_of_a_folder_is_refused(client, tmp_path):
    job = job_with(client, {"a/x.txt": "AAA"})
    out = tmp_path / "out"
    client.copy_artifacts(job, out)
    assert (out / "a" / "x.txt").stat().st_mode & 0o111 == 0  # not executable, whatever the umask allows
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "a").write_text("a file where the folder goes")
    with pytest.raises(BadInput, match=f"{blocked / 'a'} is not a folder; tlq never copies through one"):
        client.copy_artifacts(job, blocked)
    assert tree(blocked) == {"a": "a file where the folder goes"}
