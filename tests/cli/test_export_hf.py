"""`tlq export hf JOB DIR`: a folder the Hub takes as it is (timm's config, the weights, a model card) that timm
loads with the job's classes and outputs, naming no path of this machine; a bad target or job is one line."""

import json
import os
from pathlib import Path

import pytest
import timm
import torch
from click.testing import CliRunner
from huggingface_hub import ModelCard
from safetensors.torch import load_file

from tests.support import run_job_here
from tlq.cli.main import cli
from tlq.client import Client
from tlq.client.hf_export import export_hf
from tlq.jobs.spec import JobSpec


def invoke(home, *args):
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    return CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    dest = tmp_path_factory.mktemp("export") / "digits-resnet"
    result = invoke(trained.home, "export", "hf", trained.job["id"], dest)
    assert result.exit_code == 0, result.output
    return dest, result.stdout


def test_the_folder_holds_what_the_hub_takes_and_timm_loads_it_with_the_jobs_outputs(trained, exported):
    dest, out = exported
    assert sorted(p.name for p in dest.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert out.startswith(f"job {trained.job['id']} -> {dest}: README.md (")
    assert f'timm.create_model("local-dir:{dest}", pretrained=True)' in out and "hf upload ORG/NAME" in out
    weights = load_file(str(dest / "model.safetensors"))
    assert all(torch.equal(weights[k], v) for k, v in load_file(trained.job["files"]["model"]).items())
    config = json.loads((dest / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 5
    assert config["label_names"] == ["0", "1", "2", "3", "4"] and config["pretrained_cfg"]["input_size"] == [3, 64, 64]
    model = timm.create_model(f"local-dir:{dest}", pretrained=True).eval()
    job_model = timm.create_model(f"local-dir:{Path(trained.job['files']['model']).parent}", pretrained=True).eval()
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(images), job_model(images))


def test_the_model_card_shows_metrics_and_params_and_no_path_of_this_machine(trained, exported):
    dest, _ = exported
    card = ModelCard.load(dest / "README.md")
    assert card.data.library_name == "timm" and "image-classification" in card.data.tags
    text = card.text
    job = trained.job
    assert f"| val_acc | {job['metrics']['val_acc']:.4g} |" in text
    assert "| lr | 0.002 |" in text and "| strategy | full |" in text and "| epochs | 6 |" in text
    assert f"| data | {Path(trained.data).name} |" in text  # the folder's name, not where it is
    assert "5 classes apart: 0, 1, 2, 3, 4." in text and "64x64 pixels" in text
    private = {str(trained.home), str(trained.data), os.path.expanduser("~"), str(Path(trained.data).parent)}
    for path in dest.iterdir():
        if path.suffix in (".md", ".json"):
            written = path.read_text()
            assert not [p for p in private if p in written], path.name


def test_a_non_empty_folder_and_a_job_without_a_model_are_refused_in_one_line(trained, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    result = invoke(trained.home, "export", "hf", trained.job["id"], taken)
    assert result.exit_code == 2 and f"{taken} exists and is not an empty folder; name a new folder" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and os.listdir(taken) == ["notes.txt"]
    spec = JobSpec(task="predict", backbone=trained.backbone, params={"data": str(trained.val), "precision": "fp32"})
    predicted = run_job_here(trained.env, spec)
    result = invoke(trained.home, "export", "hf", predicted["id"], tmp_path / "new")
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert f"job {predicted['id']} (predict, succeeded) has no model to export" in result.stderr
    assert "`tlq jobs --task finetune --status succeeded`" in result.stderr and not (tmp_path / "new").exists()


def test_an_empty_folder_is_taken_and_a_job_from_before_timm_configs_gets_one(trained, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    client = Client(env=trained.env)
    job = client.get(trained.job["id"])
    monkeypatch.setattr(
        client, "get", lambda job_id: job | {"artifacts": [a for a in job["artifacts"] if a["kind"] != "timm_config"]}
    )
    files = export_hf(client, trained.job["id"], empty)
    assert [p.name for p in files] == ["README.md", "config.json", "model.safetensors"]
    written = json.loads((empty / "config.json").read_text())
    job_folder = Path(trained.job["files"]["model"]).parent
    assert written == json.loads((job_folder / "config.json").read_text())  # the same writer, the same config
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging folder left behind
