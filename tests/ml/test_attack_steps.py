"""The attacks' arithmetic on models small enough to reason about (milliseconds each): which way each method steps,
that every image stays inside its eps ball and on the 8-bit grid, and that the image reported is the one that
fooled the model. tests/tasks/test_attacks.py runs the same attacks as jobs on a fine-tuned model."""

import pytest
import torch
from PIL import Image
from torch import nn

from tlq.ml.attacks import PixelModel, attack, perturbation_sizes, pixel_transform, project, quantize, quantize_within

SHAPE = (3, 8, 8)


def linear_model(classes: int = 4, seed: int = 0) -> nn.Module:
    """A linear classifier on 3x8x8 pixels: its loss has one gradient direction, so each step's effect is known."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, classes))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    model[1].weight.mul_(10)  # confident enough that 8/255 moves an image to its runner-up class
    return model


def images(n: int = 6, seed: int = 1) -> torch.Tensor:
    """Images on the 8-bit grid (as decoded PNGs are), away from 0 and 1 so that steps are not clipped."""
    generator = torch.Generator().manual_seed(seed)
    return torch.round((0.25 + 0.5 * torch.rand((n, *SHAPE), generator=generator)) * 255) / 255


def probability(model, x, labels) -> torch.Tensor:
    with torch.no_grad():
        return model(x).softmax(1).gather(1, labels.view(-1, 1)).squeeze(1)


def on_grid(x: torch.Tensor) -> bool:
    return torch.allclose(x * 255, torch.round(x * 255), atol=1e-4)


@pytest.mark.parametrize("method", ["fgsm", "pgd", "gd"])
def test_a_targeted_attack_raises_the_target_probability_of_every_image(method):
    model, clean = linear_model(), images()
    target = model(clean).argsort(1)[:, -2]  # each image's runner-up class, at p 0.13-0.25
    before = probability(model, clean, target)
    eps = None if method == "gd" else 8 / 255
    step_size = 0.02 if method == "gd" else 2 / 255
    result = attack(model, clean, target, method, True, eps, steps=10, step_size=step_size, random_start=False)
    after = probability(model, result.quantized, target)
    assert (after - before > 0.3).all(), (before, after)  # to 0.68-0.91 here
    assert result.success_quantized.all() and torch.equal(result.predictions, target)
    if eps is not None:
        linf, _ = perturbation_sizes(result.quantized, clean)
        assert (linf <= eps + 1e-6).all()


@pytest.mark.parametrize("method", ["fgsm", "pgd", "gd"])
def test_an_untargeted_attack_lowers_the_true_class_probability(method):
    model, clean = linear_model(), images()
    true = model(clean).argmax(1)
    eps = None if method == "gd" else 8 / 255
    step_size = 0.02 if method == "gd" else 2 / 255
    result = attack(model, clean, true, method, False, eps, steps=10, step_size=step_size, random_start=False)
    assert (probability(model, clean, true) - probability(model, result.quantized, true) > 0.3).all()
    assert result.success_quantized.all() and (result.predictions != true).all()


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_images_stay_inside_the_eps_ball_valid_and_on_the_8bit_grid(norm):
    model, clean = linear_model(), images()
    eps = 0.01 if norm == "linf" else 0.3  # 0.01 is 2.55 levels: rounding could leave the ball
    target = torch.full((6,), 2)
    result = attack(
        model,
        clean,
        target,
        "pgd",
        True,
        eps,
        steps=12,
        step_size=eps / 3,
        norm=norm,
        generator=torch.Generator().manual_seed(0),
    )
    for x in (result.quantized, result.adversarial):
        linf, l2 = perturbation_sizes(x, clean)
        assert ((linf if norm == "linf" else l2) <= eps + 1e-6).all()
        assert x.min() >= 0 and x.max() <= 1
    assert on_grid(result.quantized)
    # the budget is used: the attack goes to the edge of the ball, not a fraction of the way
    linf, l2 = perturbation_sizes(result.adversarial, clean)
    assert ((linf if norm == "linf" else l2) >= 0.95 * eps).all()


def test_fgsm_takes_one_step_of_eps_along_the_gradient_sign():
    model, clean = linear_model(), images()
    target = torch.full((6,), 1)
    steps = []
    result = attack(
        model, clean, target, "fgsm", True, 4 / 255, steps=20, step_size=0.5, on_step=lambda *s: steps.append(s)
    )
    assert steps == [(1, 1)]  # one step, whatever steps and step_size say
    delta = result.adversarial - clean
    assert torch.allclose(delta.abs(), torch.full_like(delta, 4 / 255), atol=1e-6)  # every pixel moved by eps
    saved = result.quantized - clean
    assert torch.allclose(saved, delta, atol=1e-6) and on_grid(result.quantized)  # and the PNG keeps all of it
    weights, p = model[1].weight, model(clean[:1]).softmax(1)[0]
    toward = (weights[1] - p @ weights).view(SHAPE)  # minus the gradient of the target's cross-entropy
    assert torch.equal(torch.sign(delta[0]), torch.sign(toward))


def test_gd_steps_by_the_raw_gradient_and_each_image_independently_of_its_batch():
    model, clean = linear_model(), images()
    target = torch.full((6,), 3)
    calls = []
    together = attack(model, clean, target, "gd", True, None, 3, 0.05, on_step=lambda *s: calls.append(s))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    alone = attack(model, clean[:1], target[:1], "gd", True, None, 3, 0.05)
    assert torch.allclose(together.adversarial[0], alone.adversarial[0], atol=1e-6)
    # a larger learning rate goes further along the same direction
    further = attack(model, clean, target, "gd", True, None, 1, 0.1)
    nearer = attack(model, clean, target, "gd", True, None, 1, 0.05)
    assert torch.allclose(further.adversarial - clean, 2 * (nearer.adversarial - clean), atol=1e-5)
    weights, p = model[1].weight, model(clean[:1]).softmax(1)[0]
    toward = (weights[3] - p @ weights).view(SHAPE)  # minus the gradient of the target's cross-entropy
    step = nearer.adversarial[0] - clean[0]
    assert torch.nn.functional.cosine_similarity(step.flatten(), toward.flatten(), dim=0) > 0.999  # not its sign
    away = attack(model, clean, target, "gd", False, None, 1, 0.05)  # untargeted: the same step, the other way
    assert torch.allclose(away.adversarial - clean, clean - nearer.adversarial, atol=1e-6)
    bounded = attack(model, clean, target, "gd", True, 0.01, 1, 0.05)  # gd ignores eps: it is unconstrained
    assert torch.equal(bounded.adversarial, nearer.adversarial) and torch.equal(bounded.quantized, nearer.quantized)
    assert perturbation_sizes(bounded.quantized, clean)[0].max() > 2 / 255
    huge = attack(model, clean, target, "gd", True, None, 1, 100.0)
    assert huge.adversarial.min() == 0 and huge.adversarial.max() == 1  # clipped to valid pixels


def test_an_l2_pgd_step_has_the_length_of_its_step_size():
    model, clean = linear_model(), images()
    result = attack(model, clean, torch.full((6,), 2), "pgd", True, 5.0, 1, 0.2, norm="l2", random_start=False)
    _, l2 = perturbation_sizes(result.adversarial, clean)
    assert torch.allclose(l2, torch.full_like(l2, 0.2), atol=1e-5)
    with torch.no_grad():
        model[1].weight.mul_(1e-3)  # gradients far shorter than 1: still a step of 0.2
    result = attack(model, clean, torch.full((6,), 2), "pgd", True, 5.0, 1, 0.2, norm="l2", random_start=False)
    _, l2 = perturbation_sizes(result.adversarial, clean)
    assert torch.allclose(l2, torch.full_like(l2, 0.2), atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgds_random_start_is_seeded_spread_and_inside_the_ball(norm):
    model, clean = linear_model(), images(n=16)
    eps = 8 / 255 if norm == "linf" else 0.3
    target = torch.full((16,), 2)

    def start(seed, global_seed=100):
        torch.manual_seed(global_seed)  # the global generator must not matter: only the one passed in
        generator = torch.Generator().manual_seed(seed)
        return attack(model, clean, target, "pgd", True, eps, 0, 0.0, norm=norm, generator=generator).adversarial

    first = start(0)
    assert torch.equal(first, start(0, global_seed=200)) and not torch.equal(first, start(1))
    linf, l2 = perturbation_sizes(first, clean)
    size = linf if norm == "linf" else l2
    assert (size <= eps + 1e-6).all() and (size > 0).all()
    delta = first - clean
    if norm == "linf":  # uniform in [-eps, eps]: both signs, a mean size near eps / 2
        assert (delta > 0).any() and (delta < 0).any()
        assert 0.35 * eps < delta.abs().mean() < 0.65 * eps
    else:  # a radius drawn per image, uniform in [0, eps]: a mean near eps / 2, not all on the sphere
        assert 0.3 * eps < l2.mean() < 0.7 * eps and l2.min() < 0.5 * eps
    without = attack(model, clean, target, "pgd", True, eps, 0, 0.0, norm=norm, random_start=False)
    assert torch.equal(without.adversarial, clean)


class Cliff(nn.Module):
    """Class 0 wins only while the image's mean pixel lies within 0.025 of 0.3, class 1 elsewhere; the gradient of
    class 0's loss always says "darker" (class 1's score is flat), so an attack towards class 0 walks through the
    band and out of it again: its later iterates fail where an earlier one fooled the model."""

    def forward(self, pixels):
        s = pixels.flatten(1).mean(1)
        outside = ((s - 0.3).abs() > 0.025).float()
        return torch.stack([0.5 - s, outside], 1)


def test_the_image_kept_is_the_latest_that_fooled_the_model_when_later_steps_did_not():
    clean = torch.full((1, *SHAPE), 128 / 255)  # mean 0.502
    target = torch.zeros(1, dtype=torch.long)
    # judged: 0.502, 0.432, 0.362, 0.292 (class 0), 0.222; then the final 0.152
    result = attack(Cliff(), clean, target, "pgd", True, 0.5, 5, 0.07, random_start=False, float_outcome=True)
    assert result.success_quantized.tolist() == [True] and result.predictions.tolist() == [0]
    # the fooling image, as a PNG holds it: 0.50196 - 3 x 0.07 = 0.29196, rounded to 74/255
    assert torch.allclose(result.quantized, torch.full_like(clean, 74 / 255))
    assert Cliff()(result.quantized).argmax(1).tolist() == [0]
    assert result.success.tolist() == [False]  # the float accumulator walked on, out of the band
    assert abs(result.adversarial.mean().item() - 0.152) < 0.001


def test_predictions_are_what_the_model_says_of_the_saved_images():
    model, clean = linear_model(), images()
    target = torch.full((6,), 3)
    result = attack(model, clean, target, "pgd", True, 2 / 255, 3, 1 / 255, random_start=False)
    assert torch.equal(result.predictions, model(result.quantized).argmax(1))
    assert torch.equal(result.success_quantized, result.predictions == target)
    assert result.success is None  # the float outcome costs a forward pass: only when asked
    judged = attack(model, clean, target, "pgd", True, 2 / 255, 3, 1 / 255, random_start=False, float_outcome=True)
    assert torch.equal(judged.success, model(judged.adversarial).argmax(1) == target)


def test_quantize_keeps_what_an_8bit_png_keeps():
    x = torch.tensor([-0.3, 0.0, 0.001, 0.0025, 0.5, 0.9999, 1.7])
    assert quantize(x).tolist() == pytest.approx([0, 0, 0, 1 / 255, 128 / 255, 1, 1])


def test_quantizing_never_leaves_the_eps_ball():
    clean = images(n=4)
    ahead = (clean + 0.01).clamp(0, 1)  # 2.55 levels: plain rounding goes to 3 levels, outside the ball
    within = quantize_within(ahead, clean, 0.01, "linf")
    assert ((within - clean).abs().amax() <= 0.01 + 1e-7) and on_grid(within)
    assert torch.allclose(within - clean, torch.full_like(clean, 2 / 255), atol=1e-6)  # as far as the ball allows
    nearly = quantize_within(clean + 3.99 / 255, clean, 3.99 / 255, "linf")  # just under 4 levels: 3 is the most
    assert torch.allclose(nearly - clean, torch.full_like(clean, 3 / 255), atol=1e-6)
    rounded = quantize_within(clean + 1.7 / 255, clean, 0.01, "linf")  # inside the ball: rounded, not truncated
    assert torch.allclose(rounded - clean, torch.full_like(clean, 2 / 255), atol=1e-6)
    whole = quantize_within(clean + 3.4 / 255, clean, 4 / 255, "linf")  # whole levels: rounding stays inside
    assert torch.allclose(whole - clean, torch.full_like(clean, 3 / 255), atol=1e-6)
    direction = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    on_sphere = clean + 0.2 * direction / direction.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    l2 = quantize_within(on_sphere, clean, 0.2, "l2")
    assert (perturbation_sizes(l2, clean)[1] <= 0.2 + 1e-6).all() and on_grid(l2)
    inside = clean + 0.4 / 255  # well inside an l2 ball: plain rounding, back to clean
    assert torch.equal(quantize_within(inside, clean, 0.2, "l2"), quantize(inside))
    # each image is judged on its own: one inside its ball keeps plain rounding next to one that is not
    near = clean[0].clone()
    near[0, 0, :3] += 0.6 / 255  # rounds up to one level at three pixels: well inside a ball of 0.2
    mixed = torch.stack([near, on_sphere[1]])
    kept = quantize_within(mixed, clean[:2], 0.2, "l2")
    assert torch.equal(kept[0], quantize(near))
    toward = clean[1] + torch.trunc((on_sphere[1] - clean[1]) * 255) / 255  # the far one: rounded toward clean
    assert torch.allclose(kept[1], toward, atol=1e-6)
    edge = clean[:1].clone()
    edge[0, 0, 0, 0] += 2.6 / 255  # rounds to 3 levels, exactly on a sphere of 3/255: still inside
    assert torch.allclose(quantize_within(edge, clean[:1], 3 / 255, "l2"), quantize(edge))
    assert torch.equal(quantize_within(clean + 0.3, clean, None, "linf"), quantize(clean + 0.3))


def test_project_pulls_back_into_the_ball_and_leaves_what_is_inside():
    clean = images(n=3)
    far = clean + 0.2
    assert torch.allclose(project(far, clean, 0.05, "linf"), (clean + 0.05).clamp(0, 1))
    pulled = project(clean + 0.01 * torch.ones_like(clean), clean, 0.1, "l2")
    assert torch.allclose(perturbation_sizes(pulled, clean)[1], torch.full((3,), 0.1), atol=1e-6)
    inside = clean + 0.001
    assert torch.allclose(project(inside, clean, 0.1, "l2"), inside)
    assert torch.allclose(project(inside, clean, 0.1, "linf"), inside)
    assert torch.equal(project(clean, clean, 0.1, "l2"), clean)  # a zero perturbation stays zero, no NaN
    assert torch.equal(project(clean * 3 - 1, clean, None, "linf"), (clean * 3 - 1).clamp(0, 1))
    edges = torch.tensor([0.0, 1 / 255, 254 / 255, 1.0]).view(1, 1, 2, 2)
    for norm, eps in (("linf", 0.05), ("l2", 0.05)):
        for sign in (1, -1):
            pushed = project(edges + sign * 0.02, edges, eps, norm)
            assert pushed.min() >= 0 and pushed.max() <= 1, (norm, sign)


def test_perturbation_sizes_are_per_image_linf_and_l2():
    clean = torch.zeros((2, 3, 2, 2))
    adv = clean.clone()
    adv[0, 0, 0, 0], adv[0, 1, 1, 1] = 0.3, -0.4
    adv[1, 2, 0, 1] = 0.1
    linf, l2 = perturbation_sizes(adv, clean)
    assert linf.tolist() == pytest.approx([0.4, 0.1]) and l2.tolist() == pytest.approx([0.5, 0.1])


def test_the_pixel_model_normalizes_inside_per_channel():
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    wrapped = PixelModel(nn.Identity(), mean, std)
    pixels = torch.rand((2, 3, 4, 4), generator=torch.Generator().manual_seed(0))
    expected = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.allclose(wrapped(pixels), expected)
    import numpy as np

    wide = PixelModel(nn.Identity(), np.array(mean), np.array(std))  # float64 constants, as a config may hold
    assert wide(pixels).dtype == torch.float32
    assert set(dict(wide.named_buffers())) == {"mean", "std"}  # they move with .to(device)


def test_the_pixel_transform_is_the_models_evaluation_transform_without_normalization():
    config = {
        "input_size": (3, 16, 16),
        "interpolation": "bilinear",
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": 1.0,
        "crop_mode": "center",
    }
    transform = pixel_transform(config)
    ramp = Image.fromarray((torch.arange(32 * 40).view(32, 40, 1).repeat(1, 1, 3) % 256).byte().numpy())
    outputs = [transform(ramp) for _ in range(3)]
    assert outputs[0].shape == (3, 16, 16)
    assert all(torch.equal(outputs[0], o) for o in outputs)  # no random crop or flip: the evaluation transform
    white = transform(Image.new("RGB", (20, 20), "white"))
    assert torch.allclose(white, torch.ones_like(white))  # pixels in [0, 1], not normalized
