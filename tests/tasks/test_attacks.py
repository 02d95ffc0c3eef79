"""ideal-image and adversarial on a small model tlq fine-tuned itself (offline digits)."""

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from tests.support import run_job_here
from tlq.cli.main import cli
from tlq.jobs.spec import JobSpec

PNG = b"\x89PNG\r\n\x1a\n"


def run_job(trained, task, **params):
    return run_job_here(trained.env, JobSpec(task=task, backbone=trained.backbone, params=params))


def least_likely_class_of_noise(trained) -> str:
    """The class the model finds least likely in ideal-image's starting image (seed 0: pixels the sigmoid of
    normal noise, normalized as the model expects), so every run starts below chance, whatever the model."""
    from tlq.plugins.backbone import BackboneRef, provider_for
    from tlq.plugins.registry import backbone_providers

    ref = BackboneRef(trained.backbone)
    loaded = provider_for(ref.name, backbone_providers()).load(ref, trained.env, None)
    mean, std = (torch.tensor(loaded.data_config[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    pixels = torch.sigmoid(torch.randn((1, 3, 64, 64), generator=torch.Generator().manual_seed(0)))
    with torch.no_grad():
        return str(int(loaded.model.eval()((pixels - mean) / std).argmin()))


def test_ideal_image_raises_the_target_from_chance_to_certainty(trained):
    # Over model seeds 0-4 (the `trained` fixture's seed): target_prob 0.976, 0.984, 0.991, 0.992, 0.986 (the PNG's
    # the same to 0.001).
    target = least_likely_class_of_noise(trained)
    job = run_job(trained, "ideal-image", target=target, steps=150, snapshots=4)
    start = job["history"]["target_prob"][0]
    assert start[0] == 0 and start[1] < 0.2  # below chance (5 classes) at the start
    assert job["metrics"]["target_prob"] >= 0.9
    assert job["metrics"]["target_prob_png"] >= 0.9  # the saved 8-bit PNG holds it too
    for kind in ("image", "snapshots", "top_classes"):
        assert open(job["files"][kind], "rb").read(8) == PNG
    assert Image.open(job["files"]["image"]).size == (64, 64)


# success_rate at 8/255 towards class 3 over model seeds 0-4: pgd 1.0 on each; fgsm 0.512, 0.873, 0.975, 1.0, 0.988
# (0.0 when fgsm steps away from the target).
@pytest.mark.parametrize(("method", "least"), [("pgd", 0.8), ("fgsm", 0.3)])
def test_targeted_attacks_fool_most_correctly_classified_images_within_eps(trained, method, least):
    job = run_job(trained, "adversarial", data=str(trained.val), method=method, target="3", eps="8/255")
    metrics = job["metrics"]
    assert metrics["clean_acc"] >= 0.9
    assert metrics["success_rate"] >= least  # counted over correctly classified images not already of class 3
    assert metrics["linf"] <= 8 / 255 + 1e-6
    with open(job["files"]["per_image"]) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 100 and max(float(r["linf"]) for r in rows) <= 8 / 255 + 1e-6
    assert sum(int(r["counted"]) for r in rows) == metrics["attacked"] <= 80


def test_an_eps_list_draws_a_robustness_curve(trained):
    job = run_job(trained, "adversarial", data=str(trained.val), method="pgd", untargeted=True, eps="1/255,4/255")
    with open(job["files"]["robustness"]) as fh:
        curve = list(csv.DictReader(fh))
    assert [round(float(p["eps"]) * 255) for p in curve] == [1, 4]
    clean, small, large = job["metrics"]["clean_acc"], float(curve[0]["robust_acc"]), float(curve[1]["robust_acc"])
    # Over model seeds 0-4: clean 1.0, 0.99, 1.0, 0.98, 1.0; robust at 1/255 0.61, 0.58, 0.68, 0.56, 0.62; at 4/255
    # 0.0 on each. One level of 255 already costs a third of the accuracy; four leave almost nothing.
    assert clean >= 0.9 and all(float(p["clean_acc"]) == clean for p in curve)
    assert small <= clean - 0.1
    assert large <= min(small, 0.2)  # a larger budget fools more
    assert open(job["files"]["robustness_png"], "rb").read(8) == PNG


@pytest.mark.parametrize("method", ["pgd", "fgsm", "gd"])
def test_single_image_attack_reports_sizes_and_keeps_pixels_valid(trained, method):
    from tlq.ml.attacks import pixel_transform
    from tlq.ml.images import load_rgb
    from tlq.ml.model_card import read_card, timm_data_config

    image = sorted((trained.val / "0").glob("*.png"))[0]
    job = run_job(trained, "adversarial", image=str(image), method=method, target="3", eps="8/255")
    metrics = job["metrics"]
    card = read_card(trained.job["files"]["model_card"])
    clean = pixel_transform(timm_data_config(card["data_config"]))(load_rgb(image))
    adversarial = torch.from_numpy(np.array(Image.open(job["files"]["adversarial"]))).permute(2, 0, 1).float() / 255
    delta = (adversarial - clean).abs().max().item()
    assert metrics["linf"] == pytest.approx(delta, abs=1e-6) and metrics["l2"] > 0
    if method != "gd":
        assert delta <= 8 / 255 + 1e-6  # never beyond eps, in the saved PNG too
    predictions = json.loads(open(job["files"]["predictions"]).read())
    assert predictions["top5_before"][0]["class"] == "0" and len(predictions["top5_after_png"]) == 5
    # Every method moves the image to the target. Over model seeds 0-4 class 3 starts at p 0.002-0.006 and ends at
    # p >= 0.9998 with pgd and gd; with fgsm's single step at 0.812, 0.980, 0.990, 0.998, 0.963 (0.00006 when it
    # steps away from the target).
    before = next(p["prob"] for p in predictions["top5_before"] if p["class"] == "3")
    assert before < 0.05
    assert metrics["success"] == 1 and metrics["target_prob"] >= 0.5
    for kind in ("adversarial", "perturbation", "comparison"):
        assert open(job["files"][kind], "rb").read(8) == PNG


# All 500 digits (training and validation), eps 1/255, 10 steps. Success rates (tlq, torchattacks) over model
# seeds 0-4, untargeted: (0.400, 0.390), (0.445, 0.427), (0.254, 0.246), (0.492, 0.474), (0.364, 0.344); targeted:
# (0.262, 0.252), (0.401, 0.391), (0.085, 0.075), (0.445, 0.432), (0.233, 0.220). tlq was ahead by 0.008-0.02 on
# each, and by 0.005-0.033 in 30 runs of other models (random starts 0-2); one point below that is allowed as noise.
@pytest.mark.parametrize("targeted", [False, True])
def test_pgd_succeeds_at_least_as_often_as_torchattacks(trained, targeted):
    import torchattacks

    from tlq.ml.attacks import PixelModel, attack, pixel_transform
    from tlq.ml.images import discover_files, load_rgb
    from tlq.plugins.backbone import BackboneRef, provider_for
    from tlq.plugins.registry import backbone_providers

    ref = BackboneRef(trained.backbone)
    loaded = provider_for(ref.name, backbone_providers()).load(ref, trained.env, None)
    model = PixelModel(loaded.model.eval(), loaded.data_config["mean"], loaded.data_config["std"]).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    transform = pixel_transform(loaded.data_config)
    eps = 1 / 255
    files = discover_files(trained.data) + discover_files(trained.val)
    x = torch.stack([transform(load_rgb(f.path)) for f in files])
    y = torch.tensor([int(f.label) for f in files])
    labels = torch.full_like(y, 3) if targeted else y
    keep = (model(x).argmax(1) == y) & (y != 3 if targeted else torch.ones_like(y, dtype=torch.bool))
    steps = 10
    ours = attack(
        model,
        x[keep],
        labels[keep],
        "pgd",
        targeted,
        eps,
        steps,
        2.5 * eps / steps,
        generator=torch.Generator().manual_seed(0),
    )
    reference = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    if targeted:
        reference.set_mode_targeted_by_label(quiet=True)
    torch.manual_seed(0)
    theirs = reference(x[keep], labels[keep])
    hit = (lambda p: p == labels[keep]) if targeted else (lambda p: p != labels[keep])
    # tlq's outcome is the 8-bit image it would save; torchattacks' the float image it returns.
    our_rate = hit(model(ours.quantized).argmax(1)).float().mean().item()
    assert torch.equal(hit(ours.predictions), ours.success_quantized.cpu())
    their_rate = hit(model(theirs).argmax(1)).float().mean().item()
    assert our_rate >= their_rate - 0.01, (our_rate, their_rate)
    assert 0 < their_rate < 1  # the comparison is not saturated either way
    assert (ours.quantized - x[keep]).abs().max() <= eps + 1e-6


@pytest.fixture
def cli_env(trained):
    return {"TLQ_HOME": str(trained.home), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}


BAD = {
    "unknown target": (["ideal-image", "--target", "threee"], "is not a class of this model"),
    "target out of range": (["ideal-image", "--target", "7"], "--target 7 is out of range"),
    "eps zero": (["adversarial", "--image", "{image}", "--eps", "0"], "must be in (0, 1]"),
    "eps above one": (["adversarial", "--image", "{image}", "--eps", "2"], "must be in (0, 1]"),
    "missing image": (["adversarial", "--image", "/no/such.png"], "file /no/such.png does not exist"),
    "non-image file": (["adversarial", "--image", "{text}"], "cannot be attacked: not an image"),
    "image and data": (["adversarial", "--image", "{image}", "--data", "{data}"], "exactly one of --image"),
    "curve of one image": (["adversarial", "--image", "{image}", "--eps", "1/255,2/255"], "needs --data DIR"),
    "target and untargeted": (["adversarial", "--data", "{data}", "--target", "1", "--untargeted"], "exclude"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_attack_input_is_refused_at_submit(trained, cli_env, tmp_path, case):
    (tmp_path / "notes.png").write_text("not really a png")
    image = sorted((trained.val / "0").glob("*.png"))[0]
    args, expected = BAD[case]
    args = [a.format(image=image, text=tmp_path / "notes.png", data=trained.val) for a in args]
    before = json.loads(CliRunner().invoke(cli, ["jobs", "--json"], env=cli_env).stdout)
    result = CliRunner().invoke(cli, ["submit", args[0], "--backbone", trained.backbone, *args[1:]], env=cli_env)
    assert result.exit_code == 2, result.output
    assert expected in result.stderr and result.stderr.count("\n") == 1
    assert json.loads(CliRunner().invoke(cli, ["jobs", "--json"], env=cli_env).stdout) == before


def test_unknown_imagenet_name_lists_the_closest(tmp_path):
    from tlq.backbones.timm_models import imagenet_names
    from tlq.errors import BadInput
    from tlq.ml.classes import resolve_class

    names = imagenet_names(1000)
    assert resolve_class("Siamese cat", names) == 284
    assert resolve_class("siamese", names) == 284
    assert resolve_class("340", names) == 340 and names[340].startswith("zebra")
    with pytest.raises(BadInput, match="closest: 'Siamese cat, Siamese' \\(284\\)"):
        resolve_class("siamese kat", names)


def test_fourier_parameterization_also_reaches_the_target(trained):
    # Over model seeds 0-4: target_prob_png 0.954, 1.0, 1.0, 0.973, 1.0.
    target = least_likely_class_of_noise(trained)
    job = run_job(trained, "ideal-image", target=target, snapshots=0, param="fft", steps=150)
    assert job["metrics"]["target_prob_png"] >= 0.9


def test_jitter_raises_the_target_from_below_chance(trained):
    # Jitter optimizes the class over random shifts of the image. Over model seeds 0-4 the target starts at
    # p <= 0.002 and the saved PNG ends at 0.903, 0.969, 0.977, 0.973, 0.959.
    target = least_likely_class_of_noise(trained)
    job = run_job(trained, "ideal-image", target=target, snapshots=0, jitter=2, steps=300, lr=0.3)
    assert job["history"]["target_prob"][0][1] < 0.05
    assert job["metrics"]["target_prob_png"] >= 0.8


def test_imagenet_class_names_resolve_at_submit(tmp_path):
    env = {"TLQ_HOME": str(tmp_path), "TLQ_DATABASE_URL": "", "TLQ_BROKER_URL": "", "HF_HUB_OFFLINE": "1"}
    args = ["submit", "ideal-image", "--backbone", "test_resnet", "--no-pretrained", "--target"]
    result = CliRunner().invoke(cli, [*args, "siamese kat"], env=env)
    assert result.exit_code == 2
    assert "closest: 'Siamese cat, Siamese' (284), 'meerkat, mierkat' (299)" in result.stderr
    queued = CliRunner().invoke(cli, [*args, "Siamese cat", "--json"], env=env)
    assert queued.exit_code == 0, queued.output
    assert json.loads(queued.stdout)["params"]["target"] == "Siamese cat"
