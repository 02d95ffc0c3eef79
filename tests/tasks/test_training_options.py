"""finetune's training options do what the README says they do, each checked on its outcome.

Cheap by design: linear probes on the session's digits model (features once, epochs almost free) wherever the
option acts there too, and 32-px training runs of test_resnet on 40 digits where it needs the image path.
"""

import csv
import json
import math
import shutil

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from tests.support import finetune_here, make_digits, run_job_here
from tlq.jobs.spec import JobSpec

# fp32 everywhere: bit-exact comparisons between runs, and no precision measurement at job start.
PROBE = {"strategy": "linear-probe", "batch_size": 16, "precision": "fp32"}
IMAGES = {"image_size": 32, "batch_size": 16, "augment": "none", "precision": "fp32", "loader_workers": 0}
HEAD = ("fc.weight", "fc.bias")
PER_EPOCH = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


@pytest.fixture(scope="module")
def env(trained):
    return trained.env


def finetune(env, backbone, data, weights=None, **params) -> dict:
    return finetune_here(env, backbone, data, weights, **params)


def probe(env, trained, target, **params) -> dict:
    """A linear probe of the session's digits model on digits 5-9."""
    train, val = target
    return finetune(env, trained.backbone, train, val_data=str(val), **{**PROBE, **params})


def history(job, name="val_acc") -> list[float]:
    return [value for _, value in sorted(job["history"][name])]


def weights(job) -> dict[str, torch.Tensor]:
    return load_file(job["files"]["model"])


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def assert_best_matches_history(job) -> None:
    """best_val_acc is the highest val_acc of the history, best_epoch the first epoch that reached it."""
    accs = history(job)
    best = max(accs)
    assert job["metrics"]["best_val_acc"] == best
    assert job["metrics"]["best_epoch"] == accs.index(best) + 1


def init_weights(tmp_path, classes: int = 5, seed: int = 1):
    torch.manual_seed(seed)
    state = timm.create_model("test_resnet", num_classes=classes).state_dict()
    path = tmp_path / "init.safetensors"
    save_file(state, str(path))
    return path, state


# --- --early-stop, best_val_acc, best_epoch --------------------------------------------------------------------


EARLY = {
    "linear-probe": lambda env, trained, target, tiny, **p: probe(env, trained, target, lr=0.05, **p),
    "full": lambda env, trained, target, tiny, **p: finetune(
        env, "test_resnet", tiny, strategy="full", lr=1e-2, **IMAGES, **p
    ),
}


@pytest.mark.parametrize("strategy", sorted(EARLY))
def test_early_stop_ends_training_and_keeps_the_best_epoch(env, trained, target, tiny, strategy):
    run = EARLY[strategy]
    # A constant schedule, so a run's first N epochs are the same whatever its length.
    stopped = run(env, trained, target, tiny, epochs=30, early_stop=2, schedule="constant")
    accs, best_epoch = history(stopped), int(stopped["metrics"]["best_epoch"])
    assert_best_matches_history(stopped)
    # Two epochs without a better val_acc, then it stopped: seeds 0-4 stopped after epochs 5, 5, 4, 10, 7
    # (linear-probe) and 5, 3, 7, 5, 3 (full).
    assert len(accs) == best_epoch + 2 < 30
    assert stopped["metrics"]["final_val_acc"] == stopped["metrics"]["best_val_acc"]
    # The model it saved is the best epoch's: the very weights of the same run ended at that epoch.
    at_best = run(env, trained, target, tiny, epochs=best_epoch, schedule="constant")
    assert history(at_best) == accs[:best_epoch]
    assert same_weights(weights(stopped), weights(at_best))


# --- --schedule --------------------------------------------------------------------------------------------------


def test_schedules_shape_the_learning_rate_of_every_epoch(env, trained, target):
    runs = {s: probe(env, trained, target, lr=0.01, epochs=6, schedule=s) for s in ("constant", "cosine", "onecycle")}
    lrs = {s: history(job, "lr") for s, job in runs.items()}
    assert lrs["constant"] == pytest.approx([0.01] * 6)
    cosine = lrs["cosine"]
    assert all(a > b for a, b in zip(cosine, cosine[1:], strict=False)) and cosine[-1] < 1e-6  # annealed to 0
    onecycle = lrs["onecycle"]
    peak = onecycle.index(max(onecycle))
    assert 0 < peak < 5 and onecycle[0] < max(onecycle) <= 0.01 and onecycle[-1] < onecycle[0]  # warm up, anneal
    # The schedule drives the optimizer, not only the metric: each gives another model.
    models = [weights(job) for job in runs.values()]
    assert not same_weights(models[0], models[1]) and not same_weights(models[1], models[2])
    for job in runs.values():
        assert_best_matches_history(job)


# --- --optimizer -------------------------------------------------------------------------------------------------


def test_sgd_trains_another_model_than_adamw_and_learns(env, trained, target):
    sgd = probe(env, trained, target, lr=0.05, epochs=5, optimizer="sgd")
    adamw = probe(env, trained, target, lr=0.05, epochs=5, optimizer="adamw")
    card = json.loads(open(sgd["files"]["model_card"]).read())  # what the card says it holds
    assert card["params"]["optimizer"] == "sgd" and card["strategy"] == "linear-probe"
    assert card["weights_source"].startswith(f"job {trained.job['id']} (test_resnet fine-tuned on 0, 1, 2, 3, 4")
    assert card["lineage"] == ["test_resnet", trained.backbone] and card["classes"] == ["5", "6", "7", "8", "9"]
    assert card["metrics"]["val_acc"] == sgd["metrics"]["val_acc"] == sgd["metrics"]["final_val_acc"]
    assert not same_weights(weights(sgd), weights(adamw))  # same seed, same data: only the optimizer differs
    # Learning, not just a different model: 5 classes, chance is 0.2. Seeds 0-4: 0.69, 0.67, 0.63, 0.65, 0.64.
    assert sgd["metrics"]["val_acc"] >= 0.5


# --- --label-smoothing -------------------------------------------------------------------------------------------


def smoothed_entropy(eps: float, classes: int) -> float:
    """The least cross-entropy any model can reach against label-smoothed targets (their entropy)."""
    on, off = 1 - eps + eps / classes, eps / classes
    return -(on * math.log(on) + (classes - 1) * off * math.log(off))


def test_label_smoothing_keeps_the_training_loss_above_the_smoothed_targets_entropy(env, trained, target):
    floor = smoothed_entropy(0.3, 5)  # 0.884
    plain = probe(env, trained, target, lr=0.05, epochs=8)
    smoothed = probe(env, trained, target, lr=0.05, epochs=8, label_smoothing=0.3)
    # Gibbs' inequality: no batch's smoothed loss can go below the floor, whatever the model.
    assert min(history(smoothed, "train_loss")) >= floor
    # Without smoothing the same training goes well below it. Seeds 0-4 ended at 0.15, 0.23, 0.21, 0.18, 0.21
    # (and the smoothed runs' lowest were 0.95, 1.00, 0.98, 0.97, 0.98).
    assert history(plain, "train_loss")[-1] < 0.5 * floor


# --- --augment ---------------------------------------------------------------------------------------------------


def test_augment_levels_build_the_transforms_they_name(tiny):
    from PIL import Image

    from tlq.tasks.finetune import build_transforms

    config = {
        "input_size": (3, 32, 32),
        "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    image = Image.open(next(tiny.rglob("*.png"))).convert("RGB")

    def kinds(transform) -> set[str]:
        return {type(t).__name__ for t in transform.transforms}

    def random(transform) -> bool:
        torch.manual_seed(0)
        outputs = [transform(image) for _ in range(6)]
        return any(not torch.equal(outputs[0], o) for o in outputs[1:])

    eval_tf, none = build_transforms(config, "none")
    _, light = build_transforms(config, "light")
    _, strong = build_transforms(config, "strong")
    assert none is eval_tf and not random(none)
    assert {"RandomResizedCropAndInterpolation", "RandomHorizontalFlip"} <= kinds(light)
    assert not {"RandAugment", "RandomErasing"} & kinds(light) and random(light)
    assert {"RandomResizedCropAndInterpolation", "RandAugment", "RandomErasing"} <= kinds(strong) and random(strong)


def test_augment_changes_what_training_sees(env, tiny):
    runs = {
        level: finetune(env, "test_resnet", tiny, strategy="freeze", epochs=1, **{**IMAGES, "augment": level})
        for level in ("none", "light", "strong")
    }
    losses = {level: history(job, "train_loss") for level, job in runs.items()}
    assert len({tuple(v) for v in losses.values()}) == 3  # same seed and data: only the images seen differ
    heads = [{k: weights(job)[k] for k in HEAD} for job in runs.values()]
    assert not same_weights(heads[0], heads[1]) and not same_weights(heads[1], heads[2])
    for job in runs.values():  # validation never augments: every run is judged on the same 10 images
        assert job["metrics"]["val_images"] == 10


# --- --val-split -------------------------------------------------------------------------------------------------


def test_val_split_sizes_a_stratified_validation_set(env, trained, target):
    train, _ = target
    job = finetune(env, trained.backbone, train, epochs=1, val_split=0.3, **PROBE)
    assert job["metrics"]["val_images"] == 30 and job["metrics"]["train_images"] == 70
    with open(job["files"]["confusion_matrix"]) as fh:
        rows = list(csv.reader(fh))[1:]
    assert [sum(int(v) for v in row[1:]) for row in rows] == [6] * 5  # 30% of each class's 20


# --- --backbone-lr-mult ------------------------------------------------------------------------------------------


def test_backbone_lr_mult_defaults_to_a_tenth_after_unfreezing_and_to_1_for_full(tiny):
    """(The groups it sets: tests/ml/test_training_loops.py.)"""
    from tlq.tasks.finetune import FinetuneParams

    def mult(**params) -> float:
        return FinetuneParams(data=str(tiny), **params).backbone_multiplier

    assert mult(strategy="freeze-unfreeze") == 0.1 and mult(strategy="full") == 1.0
    assert mult(strategy="freeze-unfreeze", backbone_lr_mult=0.5) == mult(strategy="full", backbone_lr_mult=0.5) == 0.5


def test_backbone_lr_mult_zero_leaves_the_backbone_weights_as_they_were(env, tmp_path, tiny):
    path, initial = init_weights(tmp_path)
    params = dict(strategy="full", epochs=2, lr=1e-2, **IMAGES)
    still = weights(finetune(env, "test_resnet", tiny, weights=path, backbone_lr_mult=0, **params))
    moved = weights(finetune(env, "test_resnet", tiny, weights=path, **params))
    learnable = set(dict(timm.create_model("test_resnet", num_classes=5).named_parameters()))
    backbone = learnable - set(HEAD)
    assert all(torch.equal(still[k], initial[k]) for k in backbone)  # lr x 0: not one weight moved
    assert not any(torch.equal(still[k], initial[k]) for k in HEAD)  # while the head trained at lr
    # It still trained as `full`: the backbone ran in training mode, so its batch-norm statistics moved.
    assert any(not torch.equal(still[k], initial[k]) for k in initial if k.endswith("running_mean"))
    assert sum(not torch.equal(moved[k], initial[k]) for k in backbone) > len(backbone) // 2  # the default, x 1


# --- --weight-decay ----------------------------------------------------------------------------------------------


def head_norm(job) -> float:
    return weights(job)["fc.weight"].norm().item()


def decayed(env, trained, target, tiny, tmp_path, strategy, decay, seed=0) -> float:
    """The head's norm after training with ``decay``, from the same start (a constant schedule)."""
    if strategy == "linear-probe":
        job = probe(env, trained, target, lr=0.01, epochs=4, schedule="constant", weight_decay=decay, seed=seed)
    else:
        path, _ = init_weights(tmp_path)
        job = finetune(
            env,
            "test_resnet",
            tiny,
            weights=path,
            strategy="freeze",
            epochs=3,
            lr=1e-2,
            schedule="constant",
            weight_decay=decay,
            seed=seed,
            **IMAGES,
        )
    return head_norm(job)


@pytest.mark.parametrize("strategy", ["linear-probe", "freeze"])
def test_weight_decay_shrinks_the_weights(env, trained, target, tiny, tmp_path, strategy):
    plain, decayed_10 = (decayed(env, trained, target, tiny, tmp_path, strategy, d) for d in (0, 10))
    # AdamW's decay multiplies each weight by 1 - lr x decay = 0.9 every step. Seeds 0-4, ratio of the norms:
    # linear-probe 0.32, 0.33, 0.32, 0.32, 0.34; freeze 0.55, 0.55, 0.55, 0.55, 0.55.
    assert decayed_10 < 0.7 * plain


# --- val_top5 ----------------------------------------------------------------------------------------------------


def test_val_top5_is_the_top5_accuracy_of_the_final_model(env, trained, tmp_path):
    """Cross-checked against predict's top-5 lists of the saved model on the same images."""
    train = make_digits(tmp_path / "train", per_class=10)
    val = make_digits(tmp_path / "val", per_class=10, offset=10)
    job = finetune(env, trained.backbone, train, val_data=str(val), epochs=3, lr=0.01, **PROBE)
    top5, accs = history(job, "val_top5"), history(job)
    for name in (
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "val_top5",
        "lr",
        "epoch_seconds",
        "images_per_second",
    ):
        assert [step for step, _ in sorted(job["history"][name])] == [1, 2, 3], name  # one point per epoch
    assert (job["metrics"]["classes"], job["metrics"]["train_images"], job["metrics"]["val_images"]) == (10, 100, 100)
    assert len(top5) == 3 and all(t >= a for t, a in zip(top5, accs, strict=True))
    assert min(top5) < 1.0  # not a constant: seeds 0-4 gave 0.97, 0.98, 0.95, 0.97, 0.94 after epoch 1
    spec = JobSpec(task="predict", backbone=f"job:{job['id']}", params={"data": str(val), "precision": "fp32"})
    predicted = run_job_here(env, spec)
    with open(predicted["files"]["predictions"]) as fh:
        rows = list(csv.DictReader(fh))
    in_top5 = [r["label"] in {c.split(":")[0] for c in r["top_k"].split(";")} for r in rows]
    assert len(rows) == 100 and top5[-1] == pytest.approx(sum(in_top5) / 100)
    assert predicted["metrics"]["top5_accuracy"] == pytest.approx(top5[-1])
    assert predicted["metrics"]["accuracy"] == pytest.approx(job["metrics"]["final_val_acc"])
    # Fewer than 5 classes: --top-k is capped at the classes, and the metric's name says so (a top-4 of 4 is 1).
    few = make_digits(tmp_path / "four", range(4), per_class=10)
    few_history = finetune(env, trained.backbone, few, epochs=1, **PROBE)["history"]
    assert "val_top5" not in few_history and few_history["val_top4"] == [(1, 1.0)]


# --- --seed ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loader_workers", [0, 2])
def test_the_same_seed_gives_the_same_weights_and_metrics(env, tiny, loader_workers):
    """Random init, split, data order and strong augmentation (RandAugment, erasing), decoded in this process
    or in loader processes."""
    params = dict(
        strategy="full", epochs=2, lr=1e-2, **{**IMAGES, "augment": "strong", "loader_workers": loader_workers}
    )
    first, again = (finetune(env, "test_resnet", tiny, seed=0, **params) for _ in range(2))
    assert same_weights(weights(first), weights(again))
    assert all(history(first, m) == history(again, m) for m in PER_EPOCH)
    if loader_workers == 0:  # and another seed, another run
        other = finetune(env, "test_resnet", tiny, seed=1, **params)
        assert not same_weights(weights(first), weights(other))
        assert history(first, "train_loss") != history(other, "train_loss")


def test_a_class_without_an_image_file_is_refused_at_submit(tmp_path, tiny):
    from click.testing import CliRunner

    from tlq.cli.main import cli

    data = tmp_path / "data"
    for label in ("0", "1"):
        shutil.copytree(tiny / label, data / label)
    (data / "2").mkdir()
    (data / "2" / "notes.txt").write_text("the scans are still in the post")
    home = tmp_path / "home"
    env = {"TLQ_HOME": str(home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    args = ["submit", "finetune", "--backbone", "test_resnet", "--no-pretrained", "--data", str(data)]
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "class '2'" in result.stderr and "has no usable image file" in result.stderr
    assert not (home / "broker.sqlite").exists()  # nothing was queued


# --- --epochs and --batch-size left to tlq: sized to the data -----------------------------------------------------


def test_sized_defaults_follow_the_number_of_training_images():
    from tlq.tasks.finetune import sized_to_data

    assert sized_to_data(None, None, 25) == (100, 8)  # make demo's few-shot task: 3 updates an epoch (drop_last)
    assert sized_to_data(None, None, 100) == (75, 25)
    assert sized_to_data(None, None, 200) == (43, 32)
    assert sized_to_data(None, None, 960) == (10, 32)  # from about 1,000 images up: the plain defaults
    assert sized_to_data(None, None, 25_000) == (10, 32)
    assert sized_to_data(None, None, 3) == (100, 8)
    assert sized_to_data(5, None, 25) == (5, 8) and sized_to_data(None, 32, 25) == (100, 32)  # a given value stays
    assert sized_to_data(7, 4, 25) == (7, 4)


def test_a_small_dataset_gets_enough_updates_by_default_and_says_so(env, trained, target):
    """100 training images: 75 epochs of 25 (300 updates) instead of 10 of 32 (40), recorded in the model card;
    more updates reach a better model than the old fixed defaults."""
    train, val = target
    sized = finetune(env, trained.backbone, train, val_data=str(val), strategy="linear-probe", precision="fp32")
    fixed = finetune(env, trained.backbone, train, val_data=str(val), **PROBE | {"epochs": 10, "batch_size": 32})
    assert len(history(sized)) == 75 and len(history(fixed)) == 10
    card = json.loads(open(sized["files"]["model_card"]).read())
    assert card["params"]["epochs"] == 75 and card["params"]["batch_size"] == 25
    assert sized["metrics"]["val_acc"] >= fixed["metrics"]["val_acc"] + 0.05, (sized["metrics"], fixed["metrics"])
