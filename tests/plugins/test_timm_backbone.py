"""timm backbones: fast offline answers about pretrained weights, and weights files loaded safely."""

import os
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from tlq.config import Settings
from tlq.plugins.backbones.timm_models import TimmProvider
from tlq.plugins.backbones.weights import read_state_dict
from tlq.plugins.base import BackboneRef, Environment
from tlq.plugins.errors import BadInput


@pytest.fixture
def env(tmp_path):
    return Environment(Settings.load(home=tmp_path, environ={}))


@pytest.mark.parametrize("offline_flag", [True, False])
def test_uncached_pretrained_weights_fail_fast_offering_the_fixes(env, monkeypatch, offline_flag):
    if offline_flag:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    start = time.monotonic()
    with pytest.raises(BadInput) as err:
        TimmProvider().check(BackboneRef("resnet18", pretrained=True), env)
    assert time.monotonic() - start < 8
    assert "--weights FILE" in str(err.value) and "--no-pretrained" in str(err.value)


def test_unknown_architecture_names_close_matches(env):
    with pytest.raises(BadInput, match="unknown backbone 'resnet19'.*did you mean"):
        TimmProvider().check(BackboneRef("resnet19", pretrained=False), env)


def test_local_weights_load_and_the_head_adapts(env, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path / "w.safetensors"
    save_file(source.state_dict(), str(path))
    provider = TimmProvider()
    provider.check(BackboneRef("test_resnet", weights=path), env)
    loaded = provider.load(BackboneRef("test_resnet", weights=path), env, num_classes=3)
    assert loaded.model.num_classes == 3
    assert torch.equal(loaded.model.conv1[0].weight, source.conv1[0].weight)
    kept = provider.load(BackboneRef("test_resnet", weights=path), env, num_classes=None)
    assert kept.model.num_classes == 7 and torch.equal(kept.model.fc.weight, source.fc.weight)


def test_weights_for_another_architecture_are_refused(env, tmp_path):
    path = tmp_path / "vit.safetensors"
    save_file(timm.create_model("test_vit").state_dict(), str(path))
    with pytest.raises(BadInput, match="does not fit test_resnet"):
        TimmProvider().check(BackboneRef("test_resnet", weights=path), env)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"conv.weight": torch.zeros(1), "payload": _RunsCode(marker)}, path)
    with pytest.raises(BadInput, match="refused"):
        read_state_dict(path)
    assert not marker.exists()
