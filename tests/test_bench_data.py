"""The benchmark's data (bench/data.py): the same images on every run, each once."""

import sys

from tests.support import REPO


def test_digits_written_over_an_earlier_runs_folder_are_each_there_once(tmp_path, monkeypatch):
    """A bench/work folder from before the digits came from the tests' make_digits holds them under other names
    ("0.jpg", not "0_0.jpg"): kept, each digit would be there twice, in training and in validation."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    monkeypatch.delitem(sys.modules, "data", raising=False)
    from data import write_digits

    root = tmp_path / "digits"
    (root / "0").mkdir(parents=True)
    (root / "0" / "0.jpg").write_bytes(b"an earlier run's copy of digit 0")
    write_digits(root, 3, size=16, classes=range(2))
    write_digits(root, 3, size=16, classes=range(2))  # a later row: the same files
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg")) == [
        "0/0_0.jpg",
        "0/0_10.jpg",
        "0/0_20.jpg",
        "1/1_1.jpg",
        "1/1_11.jpg",
        "1/1_21.jpg",
    ]
