"""finetune's optimizers and schedules are timm's (`create_optimizer_v2`, `create_scheduler_v2`): no weight decay on
norm layers and biases, and --warmup-epochs raises the learning rate over the first epochs of each phase."""

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

from tests.support import finetune_here
from tlq.cli.main import cli
from tlq.ml.training import make_optimizer, param_groups

PROBE = {"strategy": "linear-probe", "batch_size": 16, "precision": "fp32"}
IMAGES = {"image_size": 32, "batch_size": 16, "augment": "none", "precision": "fp32", "loader_workers": 0}


def finetune(env, backbone, data, weights=None, **params) -> dict:
    return finetune_here(env, backbone, data, weights, **params)


def lrs(job) -> list[float]:
    return [value for _, value in sorted(job["history"]["lr"])]


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_the_optimizer_leaves_norms_biases_and_embeddings_undecayed(arch):
    model = timm.create_model(arch, num_classes=5)
    optimizer = make_optimizer(param_groups(model, 1e-3, 0.1, True, 0.05), "adamw", 0.05)
    assert isinstance(optimizer, torch.optim.AdamW)
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    assert len(group_of) == len(list(model.parameters()))  # every parameter, once
    undecayed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    head = {id(p) for p in model.get_classifier().parameters()}
    for name, param in model.named_parameters():
        group = group_of[id(param)]
        expected = 0.0 if param.ndim <= 1 or name in undecayed else 0.05
        assert group["weight_decay"] == expected, name
        assert group["lr"] == (1e-3 if id(param) in head else pytest.approx(1e-4)), name
    if arch == "test_vit":
        assert (
            group_of[id(model.pos_embed)]["weight_decay"] == 0.0
            and group_of[id(model.cls_token)]["weight_decay"] == 0.0
        )
    frozen = make_optimizer(param_groups(model, 1e-3, 0.1, False, 0.05), "sgd", 0.05)
    assert {id(p) for g in frozen.param_groups for p in g["params"]} == head
    assert isinstance(frozen, torch.optim.SGD) and frozen.defaults["nesterov"]


def test_heavy_weight_decay_shrinks_conv_weights_but_not_norm_layers(trained, tiny, tmp_path):
    torch.manual_seed(1)
    initial = timm.create_model("test_resnet", num_classes=5).state_dict()
    path = tmp_path / "init.safetensors"
    save_file(initial, str(path))
    common = dict(strategy="full", epochs=2, lr=0.01, schedule="constant", **IMAGES)
    job = finetune(trained.env, "test_resnet", tiny, weights=path, weight_decay=10, **common)
    final = load_file(job["files"]["model"])
    # AdamW's decoupled decay multiplies a decayed weight by 1 - lr x 10 = 0.9 at each of the 4 steps (0.66);
    # Adam's own steps move a weight by about lr (0.01) each.
    norm_weights = [k for k, v in initial.items() if k.endswith(".weight") and v.ndim == 1 and v.float().mean() > 0.5]
    assert len(norm_weights) >= 4
    for name in norm_weights:  # batch-norm scales, 1.0 at the start: were they decayed, they would be near 0.66
        assert final[name].mean().item() > 0.9, name
    convs = [k for k, v in initial.items() if v.ndim == 4]
    shrunk = [(final[k].norm() / initial[k].norm()).item() for k in convs]
    assert max(shrunk) < 0.8, shrunk


def test_warmup_raises_the_lr_over_the_first_epochs_then_the_schedule_runs(trained, target):
    train, val = target

    def probe(**params):
        return finetune(trained.env, trained.backbone, train, val_data=str(val), lr=0.01, epochs=6, **PROBE, **params)

    warm = probe(schedule="cosine", warmup_epochs=3)
    # The lr recorded after each epoch: a third of --lr more each warmup epoch, then cosine from --lr to 0.
    assert lrs(warm) == pytest.approx([0.01 / 3, 0.02 / 3, 0.01, 0.0075, 0.0025, 0.0], abs=1e-9)
    assert warm["metrics"]["val_acc"] >= 0.5  # chance is 0.2; seeds 0-4 gave 0.80-0.86
    assert lrs(probe(schedule="cosine"))[0] == pytest.approx(0.01 * (1 + 3**0.5 / 2) / 2)  # no warmup: the default
    assert lrs(probe(schedule="step")) == pytest.approx([0.01, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5])
    assert lrs(probe(schedule="constant", warmup_epochs=2)) == pytest.approx([0.005] + [0.01] * 5)


def test_each_phase_of_freeze_unfreeze_warms_up_anew(trained, tiny):
    job = finetune(
        trained.env,
        "test_resnet",
        tiny,
        strategy="freeze-unfreeze",
        epochs=6,
        freeze_epochs=3,
        lr=0.01,
        warmup_epochs=2,
        **IMAGES,
    )
    assert lrs(job) == pytest.approx([0.005, 0.01, 0.0, 0.005, 0.01, 0.0], abs=1e-9)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--schedule", "onecycle", "--warmup-epochs", "2"], "--schedule onecycle warms up by itself; drop --warmup"),
        (
            ["--strategy", "full", "--epochs", "3", "--warmup-epochs", "3"],
            "--warmup-epochs (3) must be below --epochs (3)",
        ),
    ],
)
def test_a_warmup_that_cannot_work_is_refused_at_submit(home, tiny, extra, message):
    args = ["submit", "finetune", "--backbone", "test_resnet", "--no-pretrained", "--data", tiny, *extra]
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    result = CliRunner().invoke(cli, [str(a) for a in args], env=env, catch_exceptions=False)
    assert result.exit_code == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    listed = CliRunner().invoke(cli, ["jobs", "--json"], env=env, catch_exceptions=False)
    assert json.loads(listed.stdout) == []


def test_a_checkpoint_from_before_timms_optimizer_resumes_at_its_place_in_the_schedule(caplog):
    """A job checkpointed by the previous version (one AdamW group, torch's cosine) and resumed by this one."""
    import logging
    from types import SimpleNamespace

    from tlq.ml.finetune_loops import Fit
    from tlq.ml.training import decay_groups, make_scheduler

    model = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(model.parameters(), lr=0.01, weight_decay=0.01)
    old_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(old, T_max=8)
    for _ in range(4):
        old.step()
        old_schedule.step()
    fit = Fit(SimpleNamespace(log=logging.getLogger("tlq.test"), job_id=7), None, model)
    fit.optimizer = make_optimizer([g | {"lr": 0.01} for g in decay_groups(model, 0.01)], "adamw", 0.01)
    fit.scheduler = make_scheduler(fit.optimizer, "cosine", 2, 4)
    with caplog.at_level(logging.WARNING, "tlq.test"):
        fit.restore_optimizer({"optimizer": old.state_dict(), "scheduler": old_schedule.state_dict()})
    assert "job 7: optimizer state not resumed" in caplog.text
    assert fit.scheduler.updates == 4 and [g["lr"] for g in fit.optimizer.param_groups] == pytest.approx([0.005] * 2)
