"""predict with a plain timm model: its 1000-class head speaks ImageNet's class names (timm's bundled info),
and folders named like those classes are scored."""

import csv
import shutil

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.support import run_job_here
from tlq.config import Settings
from tlq.env import Environment
from tlq.jobs.spec import JobSpec

SIAMESE, ZEBRA = 284, 340


@pytest.fixture
def imagenet_weights(tmp_path):
    """test_resnet weights with an ImageNet head that says "Siamese cat" for any image (offline stand-in for
    pretrained ImageNet weights: the same architecture, head and code path)."""
    torch.manual_seed(0)
    state = timm.create_model("test_resnet").state_dict()
    state["fc.weight"] = torch.zeros_like(state["fc.weight"])
    state["fc.bias"] = torch.zeros_like(state["fc.bias"])
    state["fc.bias"][SIAMESE] = 10.0
    path = tmp_path / "imagenet-head.safetensors"
    save_file(state, str(path))
    return path


def test_an_imagenet_model_predicts_imagenet_class_names_and_scores_folders_named_like_them(
    tmp_path, digits_dir, imagenet_weights
):
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    siamese, zebra = info.index_to_description(SIAMESE), info.index_to_description(ZEBRA)
    assert (siamese, zebra) == ("Siamese cat, Siamese", "zebra")
    data = tmp_path / "photos"
    shutil.copytree(digits_dir / "0", data / siamese)
    shutil.copytree(digits_dir / "1", data / zebra)
    shutil.copytree(digits_dir / "2", data / "unsorted")  # not a class name: predicted, not scored
    env = Environment(Settings.load(home=tmp_path / "home", environ={}))
    spec = JobSpec(
        task="predict",
        backbone="test_resnet",
        weights=imagenet_weights,
        params={"data": str(data), "precision": "fp32"},
    )
    job = run_job_here(env, spec)
    with open(job["files"]["predictions"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 36 and {r["prediction"] for r in rows} == {siamese}
    assert all(float(r["probability"]) > 0.9 and r["top_k"].startswith(f"{siamese}:") for r in rows)
    assert len(rows[0]["top_k"].split(";")) == 5
    assert job["metrics"]["labelled_images"] == 24 and job["metrics"]["accuracy"] == 0.5  # 12 right, 12 wrong
    assert {"confusion_matrix", "per_class_accuracy"} <= set(job["files"])
