"""timm backbones: fast offline answers about pretrained weights, and weights files loaded safely."""

import os

import pytest
import timm
import torch
from safetensors.torch import save_file

from tlq.backbones.timm_models import TimmProvider
from tlq.backbones.weights import read_state_dict
from tlq.config import Settings
from tlq.env import Environment
from tlq.errors import BadInput
from tlq.plugins.backbone import BackboneRef


@pytest.fixture
def env(tmp_path):
    return Environment(Settings.load(home=tmp_path, environ={}))


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE=1", "refused", "black hole"])
def test_uncached_pretrained_weights_fail_fast_offering_the_fixes(env, monkeypatch, network):
    """timm alone retries a download for about 47 s with no network; tlq's check never starts one. It asks the
    hub once, bounded by its own timeout (none at all with HF_HUB_OFFLINE=1), and answers even when that
    connection would hang forever."""
    import socket
    import threading

    from tlq.backbones import timm_models

    probes, never = [], threading.Event()

    def connect(address, timeout=None, *args, **kwargs):
        probes.append((address, timeout))
        if network == "black hole":
            never.wait()  # a connect that never returns: only the check's own bound ends the wait
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(socket, "create_connection", connect)
    if network == "HF_HUB_OFFLINE=1":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    raised = []

    def check() -> None:
        try:
            TimmProvider().check(BackboneRef("resnet18", pretrained=True), env)
        except Exception as exc:
            raised.append(exc)
        else:
            raised.append(None)

    checking = threading.Thread(target=check, daemon=True)
    checking.start()
    checking.join(60)  # a wait for the answer, generous: the check bounds itself far below this
    never.set()
    assert raised, "the check hung on a connection that never answers"
    assert isinstance(raised[0], BadInput), raised
    assert "--weights FILE" in str(raised[0]) and "--no-pretrained" in str(raised[0])
    if network == "HF_HUB_OFFLINE=1":
        assert probes == []
    else:
        assert probes == [((timm_models.HUB_HOST, 443), timm_models.REACHABILITY_TIMEOUT_S)]


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


@pytest.mark.parametrize("layout", ["state_dict", "training checkpoint"])
def test_a_benign_pth_file_loads_exactly_like_its_weights(env, tmp_path, layout):
    torch.manual_seed(0)
    state = timm.create_model("test_resnet", num_classes=7).state_dict()
    path = tmp_path / "w.pth"
    torch.save(state if layout == "state_dict" else {"state_dict": state, "epoch": 3}, path)
    ref = BackboneRef("test_resnet", weights=path)
    TimmProvider().check(ref, env)
    loaded = TimmProvider().load(ref, env, num_classes=None).model.state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(loaded[k], state[k]) for k in state)
