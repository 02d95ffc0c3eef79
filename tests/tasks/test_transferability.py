"""transferability ranks backbones by LogME as a linear probe on held-out images ranks them, in one feature pass each,
the second time from the feature cache."""

import csv
import json
import re
import shutil

import numpy as np
import pytest
import timm.data
import torch
from PIL import Image
from scipy.stats import kendalltau

from tests.support import finetune_here, make_digits, run_job_here
from tlq.errors import BadInput
from tlq.jobs.spec import JobSpec, validate_spec
from tlq.ml.features import extract_features
from tlq.ml.images import discover_files
from tlq.ml.logme import logme
from tlq.plugins.backbone import BackboneRef, provider_for

RANDOM = ["test_resnet", "test_efficientnet", "test_vit"]  # random initializations, seed 0
# The session model's own size: at 32 or 48 pixels it loses its lead to a random model (with test_convnext as a
# sixth backbone, Kendall's tau between the two rankings measured 0.33 at 32, 0.55 at 48 and 0.73 at 64 pixels).
SIZE = 64


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """All ten digits, 20 of each to score and probe on and 20 others to test the probe on; none of them among
    the images the session's model (digits 0-4) or the weak one trained on."""
    root = tmp_path_factory.mktemp("transfer")
    return (
        make_digits(root / "train", per_class=20, offset=100),
        make_digits(root / "held-out", per_class=20, offset=120),
    )


@pytest.fixture(scope="module")
def weak(trained, tmp_path_factory):
    """A model tlq trained a little: one epoch of test_resnet on 200 digits 0-4 at 32 pixels (val_acc about 0.3)."""
    data = make_digits(tmp_path_factory.mktemp("weak"), range(5), per_class=40)
    job = finetune_here(
        trained.env, "test_resnet", data, epochs=1, strategy="full", lr=2e-3, image_size=32, augment="none",
        batch_size=16, precision="fp32",
    )  # fmt: skip
    return f"job:{job['id']}"


def rank(env, backbones, data):
    spec = JobSpec(
        task="transferability",
        backbone=",".join(backbones),
        pretrained=False,
        params={"data": str(data), "image_size": SIZE, "precision": "fp32", "loader_workers": 0},
    )
    job = run_job_here(env, spec)
    with open(job["files"]["ranking"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    return job, rows


def features(env, name, *folders):
    """The features the task scores, of each folder: the backbone as the job builds it (a random one from seed 0),
    at SIZE; with the labels."""
    torch.manual_seed(0)
    ref = BackboneRef(name, pretrained=False)
    backbone = provider_for(name, env.backbones).load(ref, env, 0)
    transform = timm.data.create_transform(**dict(backbone.data_config, input_size=(3, SIZE, SIZE)))
    found = []
    for folder in folders:
        files = discover_files(folder)
        result = extract_features(backbone.model, files, transform, "cpu", "fp32", 64, 0)
        found += [result.features, np.array([f.label for f in files])]
    return found


def probe_accuracy(env, name, train, held_out) -> tuple[float, float]:
    """Held-out accuracy of a logistic regression on standardized features, and the LogME of its training features.

    Standardized: random networks' features differ in scale by orders of magnitude, and an unscaled probe with a
    fixed penalty judges the scale, not the features (random test_resnet: 0.30 unscaled, 0.68 scaled).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x, y, x_held, y_held = features(env, name, train, held_out)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000)).fit(x, y)
    return probe.score(x_held, y_held), logme(x, y)


def test_the_logme_ranking_agrees_with_a_held_out_linear_probe(trained, weak, digits):
    train, held_out = digits
    backbones = [trained.backbone, weak, *RANDOM]
    job, rows = rank(trained.env, backbones, train)
    scores = {row["backbone"]: float(row["score"]) for row in rows}
    assert [row["rank"] for row in rows] == [str(n) for n in range(1, 6)] and set(scores) == set(backbones)
    assert list(scores.values()) == sorted(scores.values(), reverse=True)  # best first
    accuracy = {}
    for name in backbones:
        accuracy[name], own_logme = probe_accuracy(trained.env, name, train, held_out)
        assert own_logme == pytest.approx(scores[name], abs=1e-5)  # the probe saw the very features the job scored
    tau = kendalltau([scores[n] for n in backbones], [accuracy[n] for n in backbones]).statistic
    print("transferability:", {n: (round(scores[n], 3), round(accuracy[n], 3)) for n in backbones}, f"tau={tau:.2f}")
    # Measured: tau 0.60. LogME (probe accuracy): session model 0.454 (0.965), test_efficientnet 0.309 (0.84),
    # weak 0.095 (0.83), test_resnet -0.007 (0.885), test_vit -0.106 (0.64).
    assert tau > 0
    assert rows[0]["backbone"] == trained.backbone == max(accuracy, key=accuracy.get)  # digits transfer to digits
    metrics = job["metrics"]
    assert metrics["logme"] == pytest.approx(scores[trained.backbone], abs=1e-5) and metrics["backbones"] == 5
    assert metrics[f"logme_job_{trained.job['id']}"] == pytest.approx(scores[trained.backbone], abs=1e-5)
    assert metrics["images"] == 200 and metrics["classes"] == 10 and metrics["skipped"] == 0
    with Image.open(job["files"]["chart"]) as chart:
        assert chart.format == "PNG" and chart.width > 300 and np.unique(np.asarray(chart.convert("L"))).size > 2


def test_a_second_run_is_served_from_the_feature_cache(trained, weak, digits, tmp_path):
    data = shutil.copytree(digits[0], tmp_path / "data")
    (data / "3" / "broken.png").write_bytes(b"\x89PNG not really")
    backbones = [trained.backbone, weak, "test_resnet"]
    first, first_rows = rank(trained.env, backbones, data)
    again, again_rows = rank(trained.env, backbones, data)
    # Both job models' features come from the cache; a random initialization is never cached.
    assert again["metrics"]["cached_images"] == 2 * 200 >= first["metrics"]["cached_images"]
    assert again_rows == first_rows
    assert again["metrics"]["skipped"] == 1 and again["metrics"]["images"] == 200
    with open(again["files"]["skipped"], newline="") as fh:
        assert list(csv.reader(fh)) == [["path", "reason"], ["3/broken.png", "not an image"]]


def test_a_list_of_backbones_is_refused_where_it_cannot_work(trained, digits):
    train, _ = digits
    with pytest.raises(BadInput, match="takes one backbone, not 2; `tlq sweep feature-extract"):
        validate_spec(JobSpec(task="feature-extract", backbone="test_resnet,test_vit", params={"data": str(train)}),
                      trained.env)  # fmt: skip
    twice = JobSpec(task="transferability", backbone="test_vit,test_vit", pretrained=False, params={"data": str(train)})
    with pytest.raises(BadInput, match="names test_vit twice"):
        validate_spec(twice, trained.env)
    unknown = JobSpec(
        task="transferability", backbone="test_vit,job:999999", pretrained=False, params={"data": str(train)}
    )
    with pytest.raises(BadInput, match="no job 999999"):
        validate_spec(unknown, trained.env)


def test_a_backbone_list_that_cannot_be_stored_or_scored_apart_is_refused_at_submit(tmp_path):
    from tlq.config import Settings
    from tlq.env import Environment
    from tlq.tasks.transferability import TransferabilityParams, check, metric_name

    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    data = make_digits(tmp_path / "data", range(2), per_class=2)

    def submit(task, backbone):
        validate_spec(JobSpec(task=task, backbone=backbone, pretrained=False, params={"data": str(data)}), env)

    for empty in (",", " , ,"):  # would queue a job with no backbone at all
        with pytest.raises(BadInput, match="names no backbone; pass --backbone NAME"):
            submit("transferability", empty)
    with pytest.raises(BadInput, match="characters as stored, over the 255 a job keeps; compare fewer backbones"):
        submit("transferability", ",".join(f"test_resnet{n}" for n in range(40)))
    # One model folder whose path has a comma is one backbone to a task that takes one: its provider judges it.
    folder = tmp_path / "models" / "a, b"
    folder.mkdir(parents=True)
    with pytest.raises(BadInput, match=r"a, b has no config.json"):
        submit("feature-extract", f"local-dir:{folder}")  # not "a" and "b"
    assert (
        JobSpec(task="feature-extract", backbone=f"local-dir:{folder}")
        .row_fields("q", {})["backbone"]
        .endswith("/a, b")
    )
    # Two names that normalize to one metric name would record one logme_ metric for both.
    params = TransferabilityParams(data=data)
    collide = r"local-dir:\S+/m/a\.b and local-dir:\S+/m/a_b would both record metric logme_\S+_m_a_b; compare them"
    with pytest.raises(BadInput, match=collide):
        check(params, env, BackboneRef("local-dir:m/a.b,local-dir:m/a_b"))
    with pytest.raises(BadInput, match=r"names local-dir:\S+/m twice"):  # one folder, as the job would name it
        check(params, env, BackboneRef("local-dir:m,local-dir:./m/"))
    deep = "local-dir:/home/someone/experiments/2026/december/transfer/models/"  # 64 characters
    long_a, long_b = metric_name(deep + "resnet_a"), metric_name(deep + "resnet_b")  # of a long name, the end
    assert (
        len(long_a) == 64 and long_a.startswith("logme_") and long_a.endswith("_models_resnet_a") and long_a != long_b
    )


def test_a_backbone_whose_features_hold_nan_fails_the_job_in_one_line_naming_it(tmp_path, monkeypatch):
    import tlq.ml.features
    from tlq.config import Settings
    from tlq.db import queries
    from tlq.env import Environment
    from tlq.jobs.submit import run_here

    real = tlq.ml.features.pooled_features_of

    def diverged(ctx, backbone, *args, **kwargs):  # test_vit's features, as a diverged model's
        result = real(ctx, backbone, *args, **kwargs)
        if backbone.arch == "test_vit":
            result.features[0, 0] = np.nan
        return result

    monkeypatch.setattr(tlq.ml.features, "pooled_features_of", diverged)
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    data = make_digits(tmp_path / "data", range(2), per_class=2)
    params = {"data": str(data), "image_size": 32, "precision": "fp32", "loader_workers": 0}
    spec = JobSpec(task="transferability", backbone="test_resnet,test_vit", pretrained=False, params=params)
    job_id = run_here(env, spec)
    with env.db.read_session() as session:
        job = queries.get_job(session, job_id)
        assert job.status == "failed" and job.error.count("\n") == 0, job.error
        assert re.search(r"test_vit gives NaN or infinite features of .*; leave it out", job.error), job.error


def test_a_sweep_hands_every_job_the_whole_backbone_list_to_rank(tmp_path):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    env = {"TLQ_HOME": str(tmp_path / "home"), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    data = make_digits(tmp_path / "data", range(2), per_class=2)
    args = ["sweep", "transferability", "--backbone", "test_resnet,test_vit", "--no-pretrained", "--data", str(data)]
    swept = CliRunner().invoke(cli, [*args, "--image-size", "32,48", "--json"], env=env)
    assert swept.exit_code == 0, swept.output
    jobs = CliRunner().invoke(cli, ["jobs", "--json"], env=env)
    listed = json.loads(jobs.stdout)
    assert sorted((job["backbone"], job["params"]["image_size"]) for job in listed) == [
        ("test_resnet,test_vit", 32),
        ("test_resnet,test_vit", 48),
    ]
