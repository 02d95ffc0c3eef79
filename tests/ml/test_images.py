"""Every kind of file a real image folder holds is decoded to RGB or skipped with its reason."""

import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support import make_digits
from tlq.ml.images import UnreadableImage, discover_files, load_rgb
from tlq.ml.labelled import load_labelled


def png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression bomb) with almost no data."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    "mode, make",
    [
        ("L", lambda: Image.new("L", (20, 10), 128)),
        ("P", lambda: Image.new("RGB", (20, 10), (255, 0, 0)).convert("P")),
        ("RGBA", lambda: Image.new("RGBA", (20, 10), (255, 0, 0, 0))),
        ("I;16", lambda: Image.fromarray(np.full((10, 20), 65535, dtype=np.uint16))),
        ("CMYK", lambda: Image.new("CMYK", (20, 10), (0, 255, 255, 0))),
    ],
)
def test_modes_are_converted_to_rgb(tmp_path, mode, make):
    image = make()
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    image.save(path)
    rgb = load_rgb(path)
    assert rgb.mode == "RGB" and rgb.size == (20, 10)
    if mode == "RGBA":  # fully transparent pixels become the white they show on
        assert rgb.getpixel((0, 0)) == (255, 255, 255)
    if mode == "I;16":
        assert rgb.getpixel((0, 0)) == (255, 255, 255)
    if mode == "CMYK":
        r, g, b = rgb.getpixel((0, 0))
        assert r > 200 and g < 60 and b < 60


def test_broken_files_are_refused_with_a_reason(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("this is not a picture")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(tmp_path / "ok.jpg", quality=95)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    png_header_only(tmp_path / "bomb.png", 20000, 20000)
    reasons = {}
    for name in ("empty.jpg", "text.jpg", "truncated.jpg", "bomb.png"):
        with pytest.raises(UnreadableImage) as err:
            load_rgb(tmp_path / name)
        reasons[name] = str(err.value)
    assert reasons == {
        "empty.jpg": "empty file",
        "text.jpg": "not an image",
        "truncated.jpg": "truncated image",
        "bomb.png": reasons["bomb.png"],
    }
    assert reasons["bomb.png"].startswith("too many pixels")
    assert load_rgb(tmp_path / "ok.jpg").size == (64, 64)


def test_discovery_labels_by_folder_and_survives_symlink_loops(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "cat" / "a.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "dog" / "b.png")
    (tmp_path / ".DS_Store").write_text("x")
    (tmp_path / "dog" / "loop").symlink_to(tmp_path)  # a folder symlink back up: not followed
    (tmp_path / "dog" / "self.jpg").symlink_to(tmp_path / "dog" / "self.jpg")  # a file symlink loop
    odd = tmp_path.as_posix().encode() + b"/cat/caf\xe9.png"  # a non-UTF-8 file name
    Image.new("RGB", (8, 8)).save(odd.decode("utf-8", "surrogateescape"))
    files = discover_files(tmp_path)
    assert [(f.rel, f.label) for f in files] == [
        ("cat/a.png", "cat"),
        ("cat/caf\\xe9.png", "cat"),
        ("dog/b.png", "dog"),
        ("dog/loop", "dog"),  # listed, not followed: it would read the whole tree again
        ("dog/self.jpg", "dog"),
    ]
    assert load_rgb(files[1].path).size == (8, 8)
    with pytest.raises(UnreadableImage, match="read already through another path"):
        load_rgb(files[3].path)
    with pytest.raises(UnreadableImage, match="Too many levels of symbolic links"):
        load_rgb(files[4].path)


def test_a_symlinked_class_folder_is_read_and_loops_are_reported(tmp_path):
    elsewhere = make_digits(tmp_path / "elsewhere", classes=[7], per_class=3)
    data = make_digits(tmp_path / "data", classes=[1, 2], per_class=3)
    (data / "7").symlink_to(elsewhere / "7")  # a class folder kept elsewhere
    (data / "1" / "again").symlink_to(data / "1")  # a folder inside itself
    (data / "2" / "up").symlink_to(data)  # the whole tree again
    (data / "8").symlink_to(data / "9")  # two links to each other
    (data / "9").symlink_to(data / "8")
    labelled = load_labelled(data)
    assert labelled.counts() == {"1": 3, "2": 3, "7": 3}
    assert [load_rgb(f.path).size for f in labelled.files if f.label == "7"] == [(32, 32)] * 3
    reasons = dict(labelled.unlabelled)
    assert set(reasons) == {"1/again", "2/up", "8", "9"}
    assert "read already through another path" in reasons["1/again"] == reasons["2/up"]
    assert reasons["8"] == reasons["9"] == "cannot read (Too many levels of symbolic links)"
    # The tasks without labels skip the same entries, each with its reason, when they load them.
    problems = {f.rel: f.problem for f in discover_files(data) if f.problem}
    assert problems == reasons
    for rel in problems:
        with pytest.raises(UnreadableImage) as caught:
            load_rgb(data / rel)
        assert str(caught.value) == reasons[rel]


def test_two_links_to_one_folder_read_it_once(tmp_path):
    shared = make_digits(tmp_path / "shared", classes=[3], per_class=2)
    data = tmp_path / "data"
    data.mkdir()
    (data / "a").symlink_to(shared / "3")
    (data / "b").symlink_to(shared / "3")
    files = discover_files(data)
    assert [f.rel.split("/")[0] for f in files if f.problem is None] == ["a", "a"]
    assert [(f.rel, f.label) for f in files if f.problem] == [("b", "b")]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder whatever its permissions")
def test_a_class_folder_that_cannot_be_listed_is_reported(tmp_path):
    data = make_digits(tmp_path / "data", classes=[1, 2, 3], per_class=2)
    (data / "3").chmod(0)
    try:
        labelled = load_labelled(data)
    finally:
        (data / "3").chmod(0o755)
    assert labelled.counts() == {"1": 2, "2": 2}
    assert dict(labelled.unlabelled) == {
        "3": "a folder tlq cannot list (Permission denied); fix its permissions or remove it"
    }
