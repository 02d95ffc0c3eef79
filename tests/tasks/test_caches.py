"""The model cache and the feature cache: work done once is not done again, and nothing changes because of it."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.support import run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec
from tlq.ml.feature_cache import FeatureCache
from tlq.plugins.backbone import BackboneRef, LoadedBackbone
from tlq.workers.model_cache import ModelCache


def test_model_cache_hands_out_copies_and_never_caches_random_init():
    loads = []

    def load():
        loads.append(1)
        return LoadedBackbone(model=torch.nn.Linear(3, 2), data_config={"input_size": (3, 8, 8)}, arch="x", source="s")

    cache = ModelCache(capacity=1)
    ref = BackboneRef("job:7")
    first = cache.get(ref, None, load)
    second = cache.get(ref, None, load)
    assert len(loads) == 1 and cache.hits == 1
    with torch.no_grad():
        second.model.weight.add_(1.0)  # a job training its copy leaves the cached one alone
    third = cache.get(ref, None, load)
    assert torch.equal(third.model.weight, first.model.weight) and not torch.equal(
        third.model.weight, second.model.weight
    )
    cache.get(BackboneRef("resnet18", pretrained=False), None, load)
    cache.get(BackboneRef("resnet18", pretrained=False), None, load)
    assert len(loads) == 3  # random init is seeded per job, so it is built fresh each time
    cache.get(ref, 5, load)
    assert len(loads) == 4  # another head size is another model


def test_feature_cache_is_bounded_and_safe_to_delete(tmp_path):
    cache = FeatureCache(tmp_path / "f.sqlite", max_bytes=10 * 4 * 8)  # ten 8-float vectors
    key = cache.model_key(arch="a", weights="w")
    cache.store(key, {f"img{i}": np.full(8, i, dtype=np.float32) for i in range(6)})
    cache.lookup(key, ["img0", "img1"])  # recently used: these survive eviction
    cache.store(key, {f"new{i}": np.full(8, i, dtype=np.float32) for i in range(6)})
    assert cache.size_bytes() <= 10 * 4 * 8
    kept = cache.lookup(key, [f"img{i}" for i in range(6)])
    assert {"img0", "img1"} <= set(kept) and np.array_equal(kept["img1"], np.full(8, 1, np.float32))
    cache.close()
    (tmp_path / "f.sqlite").unlink()
    fresh = FeatureCache(tmp_path / "f.sqlite", max_bytes=1 << 20)
    assert fresh.lookup(key, ["img0"]) == {}


@pytest.fixture
def weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "w.safetensors"
    save_file(timm.create_model("test_resnet", num_classes=10).state_dict(), str(path))
    return path


def test_a_second_extract_over_the_same_images_is_served_from_the_cache(tmp_path, digits_dir, weights):
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    spec = JobSpec(
        task="feature-extract",
        backbone="test_resnet",
        weights=weights,
        params={"data": str(digits_dir), "precision": "fp32"},
    )
    first, second = run_job_here(env, spec), run_job_here(env, spec)
    assert first["metrics"]["cached_images"] == 0 and second["metrics"]["cached_images"] == 120
    np.testing.assert_array_equal(np.load(first["files"]["features"]), np.load(second["files"]["features"]))
    bf16 = run_job_here(env, spec.model_copy(update={"params": {**spec.params, "precision": "bf16"}}))
    assert bf16["metrics"]["cached_images"] == 0  # another precision is another key


def test_linear_probe_and_predict_reuse_features_of_a_job_model(trained):
    env = trained.env
    extract = run_job_here(
        env, JobSpec(task="feature-extract", backbone=trained.backbone, params={"data": str(trained.val)})
    )
    probe = run_job_here(
        env,
        JobSpec(
            task="finetune",
            backbone=trained.backbone,
            params={"data": str(trained.val), "strategy": "linear-probe", "epochs": 3},
        ),
    )
    predicted = run_job_here(env, JobSpec(task="predict", backbone=trained.backbone, params={"data": str(trained.val)}))
    assert extract["metrics"]["images"] == 100
    assert probe["metrics"]["cached_images"] == 100 and predicted["metrics"]["cached_images"] == 100
    assert predicted["metrics"]["accuracy"] >= 0.9


def test_bf16_predictions_agree_with_fp32(trained):
    fp32 = run_job_here(
        trained.env,
        JobSpec(task="predict", backbone=trained.backbone, params={"data": str(trained.data), "precision": "fp32"}),
    )
    bf16 = run_job_here(
        trained.env,
        JobSpec(task="predict", backbone=trained.backbone, params={"data": str(trained.data), "precision": "bf16"}),
    )
    import csv

    def predictions(job):
        with open(job["files"]["predictions"]) as fh:
            return [row["prediction"] for row in csv.DictReader(fh)]

    a, b = predictions(fp32), predictions(bf16)
    assert len(a) == 400 and np.mean(np.asarray(a) == np.asarray(b)) >= 0.99
