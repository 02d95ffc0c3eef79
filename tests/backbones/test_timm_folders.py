"""timm's model folders: a finetune job's folder is one (`timm.create_model("local-dir:...")` rebuilds the model
with its classes and preprocessing), `--backbone local-dir:DIR` runs jobs on one, and `hf-hub:` offline says what
to do instead."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

from tests.support import run_job_here
from tlq.cli.main import cli
from tlq.jobs.spec import JobSpec


@pytest.fixture(scope="module")
def folder(trained) -> Path:
    """The artifact folder of the session's finetune job (test_resnet on digits 0-4, 64 px)."""
    return Path(trained.job["files"]["model"]).parent


@pytest.fixture(scope="module")
def predicted(trained) -> dict:
    """tlq's own predict job with the session's model (job:ID) on 20 held-out digits of each class."""
    spec = JobSpec(task="predict", backbone=trained.backbone, params={"data": str(trained.val), "precision": "fp32"})
    return run_job_here(trained.env, spec)


def rows(job) -> list[dict]:
    with open(job["files"]["predictions"]) as fh:
        return list(csv.DictReader(fh))


def test_timm_rebuilds_a_finetune_jobs_model_with_its_classes_preprocessing_and_outputs(trained, folder, predicted):
    assert {"config.json", "model.safetensors", "model_card.json"} <= {p.name for p in folder.iterdir()}
    model = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    assert (
        cfg["label_names"]
        == ["0", "1", "2", "3", "4"]
        == json.loads((folder / "model_card.json").read_text())["classes"]
    )
    data_config = timm.data.resolve_data_config({}, model=model)
    assert data_config["input_size"] == (3, 64, 64)  # the size the job trained at, not test_resnet's own 160
    card = json.loads((folder / "model_card.json").read_text())["data_config"]
    for key in ("mean", "std", "interpolation", "crop_pct", "crop_mode"):
        assert data_config[key] == pytest.approx(card[key]) if key in ("mean", "std") else data_config[key] == card[key]
    transform = timm.data.create_transform(**data_config)
    found = rows(predicted)
    assert len(found) == 100 and predicted["metrics"]["accuracy"] >= 0.9
    with torch.no_grad():
        for row in found:
            image = Image.open(trained.val / row["path"]).convert("RGB")
            probs = torch.softmax(model(transform(image)[None]), dim=1)[0]
            assert cfg["label_names"][int(probs.argmax())] == row["prediction"]
            assert float(probs.max()) == pytest.approx(float(row["probability"]), abs=2e-6)


def test_local_dir_backbones_run_predict_and_feature_extract_like_the_job_model(trained, folder, predicted, tmp_path):
    env = trained.env
    local = run_job_here(
        env,
        JobSpec(task="predict", backbone=f"local-dir:{folder}", params={"data": str(trained.val), "precision": "fp32"}),
    )
    assert [(r["path"], r["prediction"]) for r in rows(local)] == [
        (r["path"], r["prediction"]) for r in rows(predicted)
    ]
    assert [float(r["probability"]) for r in rows(local)] == pytest.approx(
        [float(r["probability"]) for r in rows(predicted)], abs=2e-6
    )
    assert local["metrics"]["accuracy"] == predicted["metrics"]["accuracy"]
    copy = tmp_path / "digits-model"
    shutil.copytree(folder, copy)
    features = {}
    for name in (trained.backbone, f"local-dir:{copy}"):
        spec = JobSpec(task="feature-extract", backbone=name, params={"data": str(trained.val), "precision": "fp32"})
        features[name] = np.load(run_job_here(env, spec)["files"]["features"])
    assert features[trained.backbone].shape == (100, 96)
    np.testing.assert_allclose(features[f"local-dir:{copy}"], features[trained.backbone], atol=1e-5)


def invoke(home, *args):
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


def submit(home, backbone, data, *extra):
    return invoke(home, "submit", "predict", "--backbone", backbone, "--data", data, *extra)


def test_a_relative_local_dir_is_queued_as_the_absolute_folder(tmp_path, folder, trained, monkeypatch):
    shutil.copytree(folder, tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    job = run_job_here(
        trained.env, JobSpec(task="predict", backbone="local-dir:mine", params={"data": str(trained.val)})
    )
    assert job["backbone"] == f"local-dir:{tmp_path / 'mine'}"


def test_a_folder_that_is_not_a_timm_model_is_refused_at_submit_naming_the_fix(tmp_path, folder, digits_dir):
    home = tmp_path / "home"
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.json", no_weights)
    misfit = tmp_path / "misfit"
    misfit.mkdir()
    shutil.copy(folder / "config.json", misfit)
    save_file(timm.create_model("test_resnet", num_classes=7).state_dict(), str(misfit / "model.safetensors"))
    cases = {
        tmp_path / "nowhere": "is not a folder; a timm model folder holds config.json and model.safetensors",
        empty: "has no config.json; a timm model folder holds config.json",
        no_weights: "holds no weights (model.safetensors); add them, or pass --no-pretrained",
        misfit: "model.safetensors does not fit the test_resnet its config.json names (2 tensors differ, e.g. fc.bias",
    }
    for path, message in cases.items():
        result = submit(home, f"local-dir:{path}", digits_dir)
        assert result.exit_code == 2 and message in result.stderr, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    weights = invoke(
        home,
        "submit",
        "predict",
        "--backbone",
        f"local-dir:{folder}",
        "--weights",
        folder / "model.safetensors",
        "--data",
        digits_dir,
    )
    assert weights.exit_code == 2 and "--weights does not combine with local-dir:" in weights.stderr
    assert json.loads(invoke(home, "jobs", "--json").stdout) == []  # nothing was queued


def test_a_hub_model_offline_and_not_cached_is_answered_in_one_line_with_the_way_round(tmp_path, digits_dir):
    result = submit(tmp_path / "home", "hf-hub:tlq-tests/digits-resnet", digits_dir)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "hf-hub:tlq-tests/digits-resnet is not in the local Hugging Face cache" in line
    assert "(HF_HUB_OFFLINE is set)" in line
    assert "`hf download tlq-tests/digits-resnet --local-dir DIR`" in line and "--backbone local-dir:DIR" in line


def test_a_workers_model_cache_takes_a_rewritten_folder_for_a_new_model(folder, tmp_path):
    from tlq.plugins.backbone import BackboneRef
    from tlq.workers.model_cache import cache_key

    copy = tmp_path / "model"
    shutil.copytree(folder, copy)
    ref = BackboneRef(f"local-dir:{copy}")
    before = cache_key(ref, None)
    assert before == cache_key(ref, None) and before is not None  # unchanged files: the cached model serves
    save_file(timm.create_model("test_resnet", num_classes=5).state_dict(), str(copy / "model.safetensors"))
    assert cache_key(ref, None) != before
    assert cache_key(BackboneRef(f"local-dir:{tmp_path / 'gone'}"), None) is None  # nothing to key on: no caching
