"""finetune: it learns, it transfers, each strategy trains exactly what it should, and bad data is refused."""

import csv
import json
import shutil

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tests.support import make_digits, run_job_here
from tlq.cli.main import cli
from tlq.db import JobStatus, claims, queries
from tlq.jobs.spec import JobSpec

FAST = {"image_size": 64, "augment": "none", "batch_size": 16, "precision": "fp32"}  # fp32: the same on every run


@pytest.fixture(scope="module")
def env(trained):
    return trained.env


@pytest.fixture(scope="module")
def source_dir(trained):
    return trained.data


@pytest.fixture(scope="module")
def few_shot(tmp_path_factory):
    root = tmp_path_factory.mktemp("target")
    return make_digits(root / "train", classes=range(5, 10), per_class=5), make_digits(
        root / "val", classes=range(5, 10), per_class=60, offset=5
    )


def finetune(env, backbone, data, pretrained=False, weights=None, **params):
    spec = JobSpec(
        task="finetune",
        backbone=backbone,
        pretrained=pretrained,
        weights=weights,
        params={"data": str(data), **FAST, **params},
    )
    return run_job_here(env, spec)


@pytest.fixture(scope="module")
def source_job(trained):
    return trained.job


def test_training_from_scratch_reaches_high_accuracy(source_job):
    assert source_job["metrics"]["val_acc"] >= 0.95
    assert source_job["metrics"]["train_images"] == 320 and source_job["metrics"]["val_images"] == 80
    files = source_job["files"]
    assert {"model", "model_card", "confusion_matrix", "confusion_matrix_png", "per_class_accuracy", "curves"} <= set(
        files
    )
    assert "checkpoint" not in files  # removed once the model is saved
    card = json.loads(open(files["model_card"]).read())
    assert card["arch"] == "test_resnet" and card["classes"] == ["0", "1", "2", "3", "4"]
    assert card["data_config"]["input_size"] == [3, 64, 64]
    with open(files["confusion_matrix"]) as fh:
        matrix = list(csv.reader(fh))
    assert (
        matrix[0] == ["true\\predicted", "0", "1", "2", "3", "4"]
        and sum(int(v) for r in matrix[1:] for v in r[1:]) == 80
    )
    for png in ("confusion_matrix_png", "curves"):
        assert open(files[png], "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_job_model_transfers_to_few_shot_classes_better_than_random_init(env, source_job, few_shot):
    train, val = few_shot
    common = dict(val_data=str(val), strategy="full", epochs=20, lr=3e-3, batch_size=32)
    transferred = finetune(env, f"job:{source_job['id']}", train, **common)
    scratch = finetune(env, "test_resnet", train, **common)
    # Over seeds 0-4 (the seed param of both runs): transferred 0.767, 0.803, 0.770, 0.810, 0.830; from scratch
    # 0.253, 0.603, 0.253, 0.407, 0.460; so the margin was 0.513, 0.200, 0.517, 0.403, 0.370 (0.14 at seed 1 in
    # the review, before precision was pinned to fp32). Chance is 0.2.
    assert transferred["metrics"]["val_acc"] >= scratch["metrics"]["val_acc"] + 0.1
    assert transferred["metrics"]["val_acc"] >= 0.6
    card = json.loads(open(transferred["files"]["model_card"]).read())
    assert card["lineage"] == ["test_resnet", f"job:{source_job['id']}"] and card["classes"] == [
        "5",
        "6",
        "7",
        "8",
        "9",
    ]


@pytest.fixture(scope="module")
def probe_sets(tmp_path_factory):
    """Digits 5-9, which the source model never saw: 20 to train on and 40 held out, per class."""
    root = tmp_path_factory.mktemp("probe")
    return make_digits(root / "train", classes=range(5, 10), per_class=20), make_digits(
        root / "val", classes=range(5, 10), per_class=40, offset=60
    )


def test_a_linear_probe_learns_new_classes_on_a_job_models_features(env, source_job, probe_sets):
    train, val = probe_sets
    job = finetune(
        env, f"job:{source_job['id']}", train, val_data=str(val), strategy="linear-probe", epochs=10, lr=1e-2
    )
    # Chance is 0.2. Held-out val_acc over seeds 0-4 (source model and probe seeded alike): 0.74, 0.735, 0.695,
    # 0.745, 0.66; 0.375 with labels shuffled inside each batch.
    assert job["metrics"]["val_acc"] >= 0.5
    predicted = run_job_here(
        env, JobSpec(task="predict", backbone=f"job:{job['id']}", params={"data": str(val), "precision": "fp32"})
    )
    assert predicted["metrics"]["accuracy"] >= 0.5  # the saved model holds the trained head


def test_predict_with_a_job_model_reports_accuracy(env, source_job, source_dir):
    spec = JobSpec(task="predict", backbone=f"job:{source_job['id']}", params={"data": str(source_dir)})
    job = run_job_here(env, spec)
    assert job["metrics"]["accuracy"] >= 0.95 and job["metrics"]["images"] == 400
    path = next(a["path"] for a in job["artifacts"] if a["kind"] == "predictions")
    with open(path) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 400 and rows[0].keys() == {"path", "label", "prediction", "probability", "top_k"}
    assert len(rows[0]["top_k"].split(";")) == 5


@pytest.mark.parametrize(
    "strategy, backbone_changes, head_changes",
    [("linear-probe", False, True), ("freeze", False, True), ("freeze-unfreeze", True, True), ("full", True, True)],
)
def test_each_strategy_changes_exactly_what_it_should(
    env, tmp_path, source_dir, strategy, backbone_changes, head_changes
):
    torch.manual_seed(1)
    initial = timm.create_model("test_resnet", num_classes=5).state_dict()
    weights = tmp_path / "init.safetensors"
    save_file(initial, str(weights))
    job = finetune(
        env, "test_resnet", source_dir, weights=weights, strategy=strategy, epochs=2, freeze_epochs=1, lr=1e-2
    )
    trained = load_file(job["files"]["model"])
    head = {"fc.weight", "fc.bias"}
    changed = {k for k in initial if not torch.equal(initial[k], trained[k])}
    assert bool(changed & head) == head_changes
    backbone_changed = changed - head
    if backbone_changes:
        assert any(k.endswith("conv.weight") or ".conv" in k for k in backbone_changed)
    else:
        assert backbone_changed == set()  # every frozen tensor, batch-norm statistics included, bit-identical


def test_corrupt_files_are_skipped_and_listed(env, tmp_path, source_dir):
    data = tmp_path / "data"
    shutil.copytree(source_dir, data)
    (data / "0" / "zero.png").write_bytes(b"")
    (data / "1" / "text.jpg").write_text("not an image")
    good = (data / "2").iterdir().__next__().read_bytes()
    (data / "2" / "truncated.png").write_bytes(good[: len(good) // 2])
    job = finetune(env, "test_resnet", data, strategy="freeze", epochs=1)
    assert job["metrics"]["skipped"] == 3
    with open(job["files"]["skipped"]) as fh:
        reasons = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
    assert reasons == {"0/zero.png": "empty file", "1/text.jpg": "not an image", "2/truncated.png": "truncated image"}


def test_manifest_and_label_pattern_layouts(env, tmp_path, source_dir):
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for path in sorted(source_dir.rglob("*.png"))[::4]:
        name = f"{'odd' if int(path.parent.name) % 2 else 'even'}_{path.stem}.png"
        shutil.copy(path, flat / name)
        rows.append((name, path.parent.name))
    job = finetune(env, "test_resnet", flat, label_pattern=r"^([a-z]+)_", strategy="linear-probe", epochs=2)
    assert json.loads(open(job["files"]["model_card"]).read())["classes"] == ["even", "odd"]
    manifest = flat / "labels.csv"
    manifest.write_text("path,label\n" + "".join(f"{n},{label}\n" for n, label in rows))
    job = finetune(env, "test_resnet", manifest, strategy="linear-probe", epochs=2)
    assert json.loads(open(job["files"]["model_card"]).read())["classes"] == ["0", "1", "2", "3", "4"]


def test_the_same_seed_gives_the_same_split(env, source_dir):
    from tlq.ml.labelled import load_labelled, stratified_split

    labels = load_labelled(source_dir).labels
    first = stratified_split(labels, 0.2, seed=3)
    assert first == stratified_split(labels, 0.2, seed=3)
    assert first != stratified_split(labels, 0.2, seed=4)
    val_labels = [labels[i] for i in first[1]]
    assert all(val_labels.count(c) == 16 for c in set(labels))  # stratified: 20% of 80 per class


@pytest.fixture
def one_class(tmp_path, source_dir):
    shutil.copytree(source_dir / "3", tmp_path / "one" / "3")
    return tmp_path / "one"


BAD = {
    "lr <= 0": (["--lr", "0"], "--lr: 0 is out of range; give a learning rate above 0 and at most 10, or auto"),
    "epochs < 1": (["--epochs", "0"], "--epochs: Input should be greater than or equal to 1"),
    "NaN lr": (["--lr", "nan"], "--lr: must be a finite number"),
    "one class": (["--data", "{one}"], "has one class (3)"),
    "empty folder": (["--data", "{empty}"], "holds no labelled images"),
    "pattern matches nothing": (["--label-pattern", r"^cat_(\d+)"], "matches none of the"),
    "bad regex": (["--label-pattern", "(unclosed"], "not a valid regular expression"),
    "freeze epochs too many": (["--freeze-epochs", "10", "--epochs", "5"], "needs --freeze-epochs (10) below"),
    "not a manifest": (["--data", "{file}"], "is a file but not a .csv manifest"),
    "failed job backbone": (["--backbone", "job:99"], "there is no job 99"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_parameters_exit_2_and_queue_nothing(tmp_path, source_dir, one_class, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    extra, expected = BAD[case]
    args = ["submit", "finetune", "--backbone", "test_resnet", "--no-pretrained", "--data", str(source_dir)]
    args += [a.format(one=one_class, empty=tmp_path / "empty", file=tmp_path / "notes.txt") for a in extra]
    env = {"TLQ_HOME": str(tmp_path / "home"), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "home" / "broker.sqlite").exists()


def test_job_models_serve_feature_extract_too(env, source_job, source_dir):
    spec = JobSpec(task="feature-extract", backbone=f"job:{source_job['id']}", params={"data": str(source_dir / "0")})
    job = run_job_here(env, spec)
    assert job["metrics"]["images"] == 80 and job["metrics"]["feature_dim"] == 96


def test_a_failed_job_is_no_backbone(env, tmp_path):
    from tlq.backbones.job_models import provider
    from tlq.errors import BadInput
    from tlq.plugins.backbone import BackboneRef

    with env.db.session() as session:
        failed = queries.create_job(session, task="finetune", backbone="test_resnet", params={})
        lease = claims.claim(session, failed.id, "w")
        claims.finish(session, failed.id, lease, JobStatus.FAILED, "boom")
    with pytest.raises(BadInput, match=f"job {failed.id} is failed, so it left no model"):
        provider.check(BackboneRef(f"job:{failed.id}"), env)
    with pytest.raises(BadInput, match="is not job:ID"):
        provider.check(BackboneRef("job:latest"), env)
