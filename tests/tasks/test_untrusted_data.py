"""Data sets as people assemble them (symlinked class folders, loops, odd names) train, and every CSV tlq writes
opens safely in a spreadsheet: text that would start a formula is neutralized, numbers stay numbers."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from tests.support import make_digits, run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.ml.reports import confusion_csv, csv_cell, csv_text, per_class_csv

FORMULA = '=HYPERLINK("x")'  # a file name cannot hold the "/" of a URL


def rows_of(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


@pytest.mark.parametrize(
    ("value", "written"),
    [
        ('=HYPERLINK("http://x")', '\'=HYPERLINK("http://x")'),
        ("+cmd", "'+cmd"),
        ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("cat", "cat"),
        ("a=b", "a=b"),
        ("", ""),
        ("-0.5", "-0.5"),  # text that is a plain number is read as a number, never as a formula
        ("+1e-3", "+1e-3"),
        (-0.5, "-0.5"),
        (-3, "-3"),
        (True, "True"),
    ],
)
def test_csv_text_neutralizes_formulas_and_keeps_numbers(value, written):
    assert rows_of(csv_text(["col"], [[value]])) == [["col"], [written]]
    assert csv_cell(value) == (written if isinstance(value, str) else value)


def test_reports_neutralize_class_names():
    matrix = np.array([[3, 1], [0, 4]])
    classes = ["+cmd", FORMULA]
    confusion = rows_of(confusion_csv(matrix, classes))
    assert confusion[0] == ["true\\predicted", "'+cmd", "'" + FORMULA]
    assert [r[0] for r in confusion[1:]] == ["'+cmd", "'" + FORMULA]
    per_class = rows_of(per_class_csv(matrix, classes))
    assert per_class[1:] == [["'+cmd", "4", "3", "0.7500"], ["'" + FORMULA, "4", "4", "1.0000"]]


def test_the_tasks_csv_writer_is_the_shared_one():
    from tlq.tasks.feature_extract import csv_text as task_csv_text

    assert task_csv_text is csv_text


@pytest.fixture(scope="module")
def assembled(tmp_path_factory):
    """Digits as people put data sets together: class "7" a symlink to a folder elsewhere, a class named "+cmd",
    a link that loops back into its own folder, a loose file named like a formula, and a broken image."""
    root = tmp_path_factory.mktemp("assembled")
    elsewhere = make_digits(root / "elsewhere", classes=[7], per_class=10)
    data = make_digits(root / "data", classes=[1, 2], per_class=10)
    (data / "2").rename(data / "+cmd")
    (data / "7").symlink_to(elsewhere / "7")
    (data / "1" / "again").symlink_to(data / "1")
    (data / f"{FORMULA}.png").write_bytes(b"not an image")
    (data / "+cmd" / "-1.png").write_bytes(b"")
    return data


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return Environment(Settings.load(home=tmp_path_factory.mktemp("home"), environ={}))


def read_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_finetune_reads_a_symlinked_class_and_reports_what_it_skipped(env, assembled):
    spec = JobSpec(
        task="finetune",
        backbone="test_resnet",
        pretrained=False,
        params={"data": str(assembled), "strategy": "linear-probe", "epochs": 1, "image_size": 32, "batch_size": 16},
    )
    job = run_job_here(env, spec)
    card = json.loads(open(job["files"]["model_card"]).read())
    assert sorted(card["classes"]) == ["+cmd", "1", "7"]  # the symlinked class folder is a class
    assert job["metrics"]["train_images"] + job["metrics"]["val_images"] == 30
    skipped = {r["path"]: r["reason"] for r in read_rows(job["files"]["skipped"])}
    assert skipped == {
        "'+cmd/-1.png": "empty file",
        "1/again": "a folder read already through another path (a symlink loop or a second link to it); not followed",
        f"'{FORMULA}.png": "not inside a class folder",
    }
    per_class = {r["class"]: r for r in read_rows(job["files"]["per_class_accuracy"])}
    assert set(per_class) == {"'+cmd", "1", "7"}
    assert all(0.0 <= float(r["accuracy"]) <= 1.0 for r in per_class.values())
    with open(job["files"]["confusion_matrix"], newline="") as fh:
        assert "'+cmd" in next(csv.reader(fh))


def test_feature_extract_skips_the_loop_with_its_reason(env, assembled):
    spec = JobSpec(task="feature-extract", backbone="test_resnet", pretrained=False, params={"data": str(assembled)})
    job = run_job_here(env, spec)
    assert job["metrics"]["images"] == 30 and job["metrics"]["skipped"] == 3  # 10 of 7 are behind the link
    skipped = {r["path"]: r["reason"] for r in read_rows(job["files"]["skipped"])}
    assert skipped == {
        "'+cmd/-1.png": "empty file",
        "1/again": "a folder read already through another path (a symlink loop or a second link to it); not followed",
        f"'{FORMULA}.png": "not an image",
    }
    index = read_rows(job["files"]["index"])
    assert {r["label"] for r in index} == {"'+cmd", "1", "7"}
    assert all(r["path"].startswith(("'+cmd/", "1/", "7/")) for r in index)
