"""The feature cache serves a job only what the same job computes with the cache off, bit for bit: every task
that reads it, and every setting that changes features (image size, precision, weights) is part of the key."""

import hashlib
import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from tests.support import run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.plugins.backbone import BackboneRef


@pytest.fixture
def env(trained, tmp_path):
    """The trained model's database and artifacts, with a feature cache of this test's own."""
    settings = trained.env.settings
    return Environment(
        Settings.load(
            home=tmp_path / "home",
            database_url=settings.database_url,
            artifacts_dir=settings.artifacts_dir,
            environ={},
        )
    )


def digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def uncached(env, spec):
    """The same job with the feature cache turned off."""
    job = run_job_here(Environment(env.settings.model_copy(update={"feature_cache_mb": 0})), spec)
    assert job["metrics"]["cached_images"] == 0
    return job


def probe(backbone, data, **params):
    return JobSpec(
        task="finetune",
        backbone=backbone,
        params={"data": str(data), "strategy": "linear-probe", "epochs": 3, "precision": "fp32", **params},
    )


def test_features_of_another_image_size_are_never_served(env, trained):
    """The reproduction: a linear probe at --image-size 32 stored 32-px features that a later feature-extract at
    the model's own size read back, off by up to 0.27."""
    run_job_here(env, probe(trained.backbone, trained.val, image_size=32))
    extract = JobSpec(
        task="feature-extract", backbone=trained.backbone, params={"data": str(trained.val), "precision": "fp32"}
    )
    served = run_job_here(env, extract)
    assert served["metrics"]["cached_images"] == 0
    np.testing.assert_array_equal(
        np.load(served["files"]["features"]), np.load(uncached(env, extract)["files"]["features"])
    )


@pytest.mark.parametrize("task", ["feature-extract", "predict", "linear-probe"])
def test_every_task_that_reads_the_cache_gets_exactly_what_it_would_compute(env, trained, task):
    if task == "linear-probe":
        spec = probe(trained.backbone, trained.val, image_size=48)
    else:
        spec = JobSpec(task=task, backbone=trained.backbone, params={"data": str(trained.val), "precision": "fp32"})
    run_job_here(env, spec)  # fills the cache
    served = run_job_here(env, spec)
    assert served["metrics"]["cached_images"] == 100
    fresh = uncached(env, spec)
    if task == "linear-probe":  # the head trained on served features is the one trained on fresh ones
        a, b = load_file(served["files"]["model"]), load_file(fresh["files"]["model"])
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert served["metrics"]["val_acc"] == fresh["metrics"]["val_acc"]
    else:
        kind = {"feature-extract": "features", "predict": "predictions"}[task]
        assert digest(served["files"][kind]) == digest(fresh["files"][kind])  # bit for bit
    other = spec.model_copy(update={"params": {**spec.params, "precision": "bf16"}})
    assert run_job_here(env, other)["metrics"]["cached_images"] == 0  # another precision is another key


def test_features_of_other_weights_are_never_served(tmp_path, digits_dir):
    env = Environment(Settings.load(home=tmp_path / "other", environ={}))
    files = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        files.append(tmp_path / f"w{seed}.safetensors")
        save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(files[-1]))
    specs = [
        JobSpec(
            task="feature-extract",
            backbone="test_resnet",
            weights=w,
            params={"data": str(digits_dir), "precision": "fp32"},
        )
        for w in files
    ]
    run_job_here(env, specs[0])
    second = run_job_here(env, specs[1])
    assert second["metrics"]["cached_images"] == 0
    np.testing.assert_array_equal(
        np.load(second["files"]["features"]), np.load(uncached(env, specs[1])["files"]["features"])
    )


def test_weights_rewritten_under_their_old_size_and_mtime_are_new_weights(tmp_path, digits_dir):
    """Same-architecture weights have the same size, and `cp -p`, `rsync -t` or unpacking an archive give new
    bytes an old mtime: neither the feature cache nor a worker's model cache may take them for the old ones."""
    from tlq.plugins.backbone import provider_for
    from tlq.workers.model_cache import ModelCache

    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    weights = tmp_path / "w.safetensors"

    def write_weights(seed: int) -> None:
        torch.manual_seed(seed)
        save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(weights))

    write_weights(0)
    before = os.stat(weights)
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        weights=weights,
        params={"data": str(digits_dir), "precision": "fp32"},
    )
    ref = BackboneRef("test_resnet", weights)
    models = ModelCache(capacity=2)
    provider = provider_for(ref.name, env.backbones)
    models.get(ref, 0, lambda: provider.load(ref, env, 0))
    run_job_here(env, spec)  # fills the feature cache
    write_weights(1)
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(weights).st_size == before.st_size and os.stat(weights).st_mtime_ns == before.st_mtime_ns
    second = run_job_here(env, spec)
    assert second["metrics"]["cached_images"] == 0
    np.testing.assert_array_equal(
        np.load(second["files"]["features"]), np.load(uncached(env, spec)["files"]["features"])
    )
    served = models.get(ref, 0, lambda: provider.load(ref, env, 0)).model.state_dict()
    written = load_file(str(weights))
    common = [k for k in written if k in served]
    assert len(common) > 10 and all(torch.equal(served[k], written[k]) for k in common)  # the new weights
