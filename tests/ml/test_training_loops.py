"""The training loops on a model of a few hundred weights and images that are told apart by one bright square
(milliseconds per epoch): each strategy learns and reaches held-out accuracy far above chance, a frozen backbone
stays frozen, the reported loss and accuracy are the epoch's, and a resumed run can restore its random state.
tests/tasks/test_finetune.py and test_training_options.py run the same loops inside real finetune jobs."""

import math
import os
import random
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from tlq.ml.features import image_loader
from tlq.ml.images import ImageFile
from tlq.ml.training import (
    evaluate,
    evaluate_head,
    load_checkpoint,
    make_optimizer,
    make_scheduler,
    param_groups,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    summarize,
    train_epoch,
    train_head_epoch,
    training_loader,
)
from tlq.plugins.artifacts import ArtifactStore

CLASSES = 3
SIZE = 12


class TinyNet(nn.Module):
    """The shape of a timm model: a backbone with batch norm, ``forward_head(pre_logits=True)``, a classifier."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 3 * 3, classes)

    def forward_features(self, x):
        return torch.relu(self.norm(self.conv(x)))

    def forward_head(self, x, pre_logits: bool = False):
        x = nn.functional.adaptive_avg_pool2d(x, 3).flatten(1)
        return x if pre_logits else self.fc(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def get_classifier(self):
        return self.fc


def to_tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255).permute(2, 0, 1)


def write_images(folder, per_class: int, seed: int) -> tuple[list[ImageFile], list[int]]:
    """Noisy grey PNGs; class k has a bright square in its own corner (0: top left, 1: top right, 2: bottom)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files, targets = [], []
    corners = [(0, 0), (0, SIZE // 2), (SIZE // 2, SIZE // 4)]
    for i in range(per_class * CLASSES):
        label = i % CLASSES
        pixels = rng.normal(90, 25, (SIZE, SIZE, 3))
        row, col = corners[label]
        pixels[row : row + SIZE // 2, col : col + SIZE // 2] += 110
        path = folder / f"{i}.png"
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)
        files.append(ImageFile(path, path.name, str(label)))
        targets.append(label)
    return files, targets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("squares")
    return write_images(root / "train", per_class=12, seed=0), write_images(root / "val", per_class=10, seed=1)


def train(data, train_backbone: bool, seed: int, epochs: int = 4, batch_size: int = 8):
    (files, targets), (val_files, val_targets) = data
    torch.manual_seed(seed)
    model = TinyNet()
    optimizer = make_optimizer(param_groups(model, 0.03, 1.0, train_backbone), "adamw", 0.0)
    loader = training_loader(files, to_tensor, batch_size, seed, workers=0)
    scheduler = make_scheduler(optimizer, "constant", 1, epochs * len(loader))
    criterion = nn.CrossEntropyLoss()
    history = [
        train_epoch(model, loader, targets, optimizer, scheduler, criterion, "cpu", "fp32", epoch, train_backbone)
        for epoch in range(epochs)
    ]
    val_loader = image_loader(val_files, to_tensor, 16, workers=0)
    return model, history, evaluate(model, val_loader, val_targets, criterion, "cpu", "fp32")


@pytest.mark.parametrize("train_backbone", [True, False], ids=["full", "frozen backbone"])
def test_training_reaches_held_out_accuracy_far_above_chance(data, train_backbone):
    # Held-out accuracy over seeds 0-4 was 1.0 for both (chance: 0.33); 0.83 with a seed at 3 epochs instead of 4.
    model, history, val = train(data, train_backbone, seed=0)
    assert val.acc >= 0.8 and val.images == 30
    assert history[-1].acc >= 0.8 and history[-1].loss < history[0].loss
    assert val.predictions == [
        int(p) for p in model(torch.stack([to_tensor(Image.open(f.path)) for f in data[1][0]])).argmax(1)
    ]
    assert val.targets == data[1][1]


def test_a_frozen_backbone_keeps_its_weights_and_batch_norm_statistics(data):
    torch.manual_seed(3)
    untouched = TinyNet().state_dict()
    model, _, _ = train(data, train_backbone=False, seed=3, epochs=2)
    after = model.state_dict()
    assert all(torch.equal(untouched[k], after[k]) for k in untouched if not k.startswith("fc."))
    assert not torch.equal(untouched["fc.weight"], after["fc.weight"])
    trained, _, _ = train(data, train_backbone=True, seed=3, epochs=1)
    assert not torch.equal(untouched["norm.running_mean"], trained.state_dict()["norm.running_mean"])
    assert not torch.equal(untouched["conv.weight"], trained.state_dict()["conv.weight"])


def test_the_reported_epoch_loss_and_accuracy_are_over_every_image_seen(data):
    """With a learning rate of 0 the model does not move: the epoch's figures must be those of one pass."""
    (files, targets), _ = data
    torch.manual_seed(0)
    model = TinyNet()
    optimizer = make_optimizer(param_groups(model, 0.0, 1.0, False), "adamw", 0.0)
    loader = training_loader(files, to_tensor, 8, 0, workers=0)  # 36 images: batches of 8, the last of 4
    steps = []
    before = time.perf_counter()
    epoch = train_epoch(
        model,
        loader,
        targets,
        optimizer,
        make_scheduler(optimizer, "constant", 1, 10),
        nn.CrossEntropyLoss(),
        "cpu",
        "fp32",
        0,
        False,
        on_step=lambda *s: steps.append(s),
    )
    assert 0 < epoch.seconds <= time.perf_counter() - before
    # decoding in this process (workers=0) is time the model waits; the steps are not
    assert 0 < epoch.wait_seconds < epoch.seconds and 0 < epoch.data_wait_share < 1
    model.eval()
    with torch.no_grad():
        logits = model(torch.stack([to_tensor(Image.open(f.path)) for f in files]))
    labels = torch.tensor(targets)
    assert epoch.images == 36 and steps == [(i, 5) for i in range(1, 6)]
    assert epoch.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert epoch.acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())


def test_a_batch_of_one_is_dropped_and_each_epoch_has_its_own_order_again_after_a_resume(data):
    (files, _), _ = data
    odd = files[:17]  # 17 = 2 x 8 + 1: a last batch of one would break batch norm
    loader = training_loader(odd, to_tensor, 8, seed=5, workers=0)
    assert len(loader) == 2
    assert len(training_loader(files[:16], to_tensor, 8, seed=5, workers=0)) == 2
    assert len(training_loader(files[:18], to_tensor, 8, seed=5, workers=0)) == 3
    assert len(training_loader(files[:1], to_tensor, 8, seed=5, workers=0)) == 1  # one image is all there is

    def order(epoch, seed=5):
        loader = training_loader(files, to_tensor, 8, seed=seed, workers=0)
        loader.sampler.set_epoch(epoch)
        return [i for _, indices, _ in loader for i in indices]

    assert sorted(order(0)) == list(range(36))
    assert order(1) == order(1) and order(1) != order(2) and order(1) != order(1, seed=6)


def features_and_labels(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three Gaussian clusters in 6 dimensions, well apart."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % CLASSES
    centers = torch.eye(6)[:CLASSES] * 4
    return centers[labels] + torch.randn((n, 6), generator=generator), labels


def test_a_linear_probe_on_features_learns_the_true_labels():
    """A head trained on labels shuffled within each batch (a reviewer's planted bug) falls to chance here."""
    features, labels = features_and_labels(90, seed=0)
    held_out, held_out_labels = features_and_labels(60, seed=1)
    torch.manual_seed(0)
    head = nn.Linear(6, CLASSES)
    optimizer = make_optimizer([{"params": head.parameters(), "lr": 0.05}], "adamw", 0.0)
    scheduler = make_scheduler(optimizer, "constant", 1, 100)
    criterion = nn.CrossEntropyLoss()
    history = [
        train_head_epoch(head, features, labels, optimizer, scheduler, criterion, 16, seed=epoch) for epoch in range(8)
    ]
    val = evaluate_head(head, held_out, held_out_labels, criterion)
    # Held-out accuracy over seeds 0-4 (data and head): 0.97-1.0 (chance: 0.33); 0.9 stays below the worst.
    assert val.acc >= 0.9 and val.images == 60
    assert history[-1].acc >= 0.9 and history[-1].loss < history[0].loss and history[0].images == 90
    with torch.no_grad():
        assert val.predictions == head(held_out).argmax(1).tolist()


def test_a_head_epochs_figures_are_over_every_feature():
    features, labels = features_and_labels(30, seed=2)
    head = nn.Linear(6, CLASSES)
    optimizer = make_optimizer([{"params": head.parameters(), "lr": 0.0}], "adamw", 0.0)
    before = time.perf_counter()
    epoch = train_head_epoch(
        head, features, labels, optimizer, make_scheduler(optimizer, "constant", 1, 4), nn.CrossEntropyLoss(), 8, 0
    )
    with torch.no_grad():
        logits = head(features)
    assert epoch.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item(), rel=1e-5)
    assert epoch.acc == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert epoch.images == 30
    assert 0 < epoch.seconds <= time.perf_counter() - before  # its own duration, for images per second


def test_a_head_epoch_shuffles_by_its_seed_alone():
    features, labels = features_and_labels(60, seed=3)

    def head_after_an_epoch(seed):
        torch.manual_seed(0)
        head = nn.Linear(6, CLASSES)
        optimizer = make_optimizer([{"params": head.parameters(), "lr": 0.05}], "sgd", 0.0)
        torch.manual_seed(seed + 1)  # the global generator moved on differently: it must not matter
        train_head_epoch(
            head, features, labels, optimizer, make_scheduler(optimizer, "constant", 1, 8), nn.CrossEntropyLoss(), 8, 11
        )
        return head.weight.detach().clone()

    assert torch.equal(head_after_an_epoch(0), head_after_an_epoch(1))


def test_summaries_report_the_top_k_asked_for_capped_at_the_classes():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0.0, 1, 2, 3, 4, 5], [1.0, 2, 0, 0, 0, 9]])
    labels = torch.tensor([0, 0, 1])
    summary = summarize([logits[:2], logits[2:]], [labels[:2], labels[2:]], nn.CrossEntropyLoss(), 2.0)
    assert summary.acc == pytest.approx(1 / 3) and (summary.k, summary.top_k) == (5, pytest.approx(2 / 3))
    assert summary.loss == pytest.approx(nn.functional.cross_entropy(logits, labels).item())
    assert (summary.predictions, summary.targets, summary.images) == ([0, 5, 5], [0, 0, 1], 3)
    assert summary.images_per_second == pytest.approx(1.5)
    # Top-2: the first image's class is its likeliest, the third's its second likeliest, the second's its last.
    top2 = summarize([logits], [labels], nn.CrossEntropyLoss(), 1.0, k=2)
    assert (top2.k, top2.top_k) == (2, pytest.approx(2 / 3))
    four = summarize([logits[:, :4]], [labels], nn.CrossEntropyLoss(), 1.0)  # k=5 of 4 classes: a top-4
    assert (four.k, four.top_k) == (4, 1.0)
    empty = summarize([], [], nn.CrossEntropyLoss(), 1.0)
    assert math.isnan(empty.loss) and empty.acc == 0 and empty.images == 0


def test_parameter_groups_train_the_head_at_lr_and_the_backbone_at_its_multiple_or_not_at_all():
    model = TinyNet()
    head, backbone = param_groups(model, 0.01, 0.1, train_backbone=True)
    assert head["lr"] == 0.01 and backbone["lr"] == pytest.approx(0.001)
    assert {id(p) for p in head["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert {id(p) for p in backbone["params"]} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("fc.")
    }
    assert all(p.requires_grad for p in model.parameters())
    (only,) = param_groups(model, 0.01, 0.1, train_backbone=False)
    assert {id(p) for p in only["params"]} == {id(model.fc.weight), id(model.fc.bias)}
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]


def test_the_optimizer_is_the_one_asked_for_with_its_weight_decay():
    model = TinyNet()
    sgd = make_optimizer(param_groups(model, 0.1, 1.0, True), "sgd", 0.02)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["momentum"], sgd.defaults["nesterov"], sgd.defaults["weight_decay"]) == (0.9, True, 0.02)
    adamw = make_optimizer(param_groups(model, 0.1, 1.0, True), "adamw", 0.03)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.03
    assert [g["lr"] for g in adamw.param_groups] == [0.1, 0.1]


def lrs(name: str, steps: int, lr: float = 0.1) -> list[float]:
    model = nn.Linear(2, 2)
    optimizer = make_optimizer([{"params": model.parameters(), "lr": lr}], "sgd", 0.0)
    scheduler = make_scheduler(optimizer, name, 1, steps)
    seen = []
    for _ in range(steps):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_schedules_shape_the_learning_rate_as_named():
    assert lrs("constant", 10) == [0.1] * 10
    cosine = lrs("cosine", 10)
    assert cosine[0] == 0.1 and all(a > b for a, b in zip(cosine, cosine[1:], strict=False)) and cosine[-1] < 0.01
    onecycle = lrs("onecycle", 20)
    peak = onecycle.index(max(onecycle))
    assert max(onecycle) == pytest.approx(0.1) and 3 <= peak <= 8  # warms up to --lr, then anneals
    assert onecycle[0] < 0.01 and onecycle[-1] < 0.001
    assert lrs("cosine", 0) == lrs("onecycle", 0) == []  # a run with no steps (no images) is no error


def test_the_random_state_saved_with_a_checkpoint_replays_the_same_numbers(tmp_path):
    seed_everything(7)
    first = (random.random(), float(np.random.rand()), torch.rand(1).item())
    seed_everything(7)
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == first
    seed_everything(9)
    other = (random.random(), float(np.random.rand()), torch.rand(1).item())
    assert all(a != b for a, b in zip(first, other, strict=True))  # each generator follows the seed
    seed_everything(2**32 + 7)  # a seed past numpy's range still seeds numpy
    state = rng_state()
    records = []
    store = ArtifactStore(tmp_path, 1, lambda *row: records.append(row))
    save_checkpoint(store, "checkpoint.pt", {"rng": state, "epoch": 3})
    expected = (random.random(), float(np.random.rand()), torch.rand(1).item())
    random.random(), np.random.rand(), torch.rand(1)  # the run moved on
    loaded = load_checkpoint(store.path("checkpoint.pt"))
    assert loaded["epoch"] == 3 and records[0][:2] == ("checkpoint", "1/checkpoint.pt")
    set_rng_state(loaded["rng"])
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == expected


def test_a_checkpoint_never_runs_code_when_read(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"x": Payload()}, path)
    with pytest.raises(Exception, match="[Ww]eights only"):
        load_checkpoint(path)


def test_a_frozen_backbone_stays_in_eval_mode_while_its_head_trains(data):
    model, _, _ = train(data, train_backbone=False, seed=0, epochs=1)
    model.fc = nn.Sequential(nn.Dropout(0.5), model.fc)  # a head with dropout, as timm heads may have
    model.get_classifier = lambda: model.fc
    (files, targets), _ = data
    optimizer = make_optimizer(param_groups(model, 0.01, 1.0, False), "adamw", 0.0)
    loader = training_loader(files, to_tensor, 8, 0, workers=0)
    scheduler = make_scheduler(optimizer, "constant", 1, len(loader))
    train_epoch(model, loader, targets, optimizer, scheduler, nn.CrossEntropyLoss(), "cpu", "fp32", 0, False)
    assert model.fc.training and model.fc[0].training  # dropout on while the head learns
    assert not model.norm.training  # batch norm statistics frozen


def test_an_epoch_of_one_image_reports_that_images_loss_and_accuracy(data):
    (files, targets), _ = data
    torch.manual_seed(0)
    model = TinyNet().eval()
    with torch.no_grad():
        predicted = model(torch.stack([to_tensor(Image.open(f.path)) for f in files])).argmax(1).tolist()
    right = next(i for i, (p, t) in enumerate(zip(predicted, targets, strict=True)) if p == t)  # the untrained
    # model happens to get this one right: an epoch of it alone has accuracy 1
    optimizer = make_optimizer(param_groups(model, 0.0, 1.0, False), "adamw", 0.0)
    loader = training_loader([files[right]], to_tensor, 8, 0, workers=0)
    scheduler = make_scheduler(optimizer, "constant", 1, 1)
    label = [targets[right]]
    epoch = train_epoch(model, loader, label, optimizer, scheduler, nn.CrossEntropyLoss(), "cpu", "fp32", 0, False)
    model.eval()
    with torch.no_grad():
        logits = model(to_tensor(Image.open(files[right].path))[None])
    assert (epoch.images, epoch.acc) == (1, 1.0)
    assert epoch.loss == pytest.approx(nn.functional.cross_entropy(logits, torch.tensor(label)).item(), rel=1e-5)


class Batches(list):
    """A loader's batches as given: (images or None when all were unreadable, indices, unreadable)."""

    class sampler:  # noqa: N801 - the loader's attribute
        @staticmethod
        def set_epoch(epoch):
            pass


def test_a_batch_of_only_unreadable_images_is_skipped_not_the_end_of_the_epoch(data):
    (files, targets), _ = data
    images = torch.stack([to_tensor(Image.open(f.path)) for f in files[:4]])
    loader = Batches([(None, [], [(9, "bad"), (10, "bad")]), (images, [0, 1, 2, 3], [])])
    model = TinyNet()
    optimizer = make_optimizer(param_groups(model, 0.01, 1.0, False), "adamw", 0.0)
    epoch = train_epoch(
        model,
        loader,
        targets,
        optimizer,
        make_scheduler(optimizer, "constant", 1, 2),
        nn.CrossEntropyLoss(),
        "cpu",
        "fp32",
        0,
        False,
    )
    assert epoch.images == 4


def test_a_bf16_epoch_runs_in_bf16(data):
    """The planted bug this catches: bf16 autocast made a no-op, so a bf16 job trained in fp32."""
    (files, targets), _ = data

    def epoch_loss(precision):
        torch.manual_seed(0)
        model = TinyNet()
        optimizer = make_optimizer(param_groups(model, 0.0, 1.0, False), "adamw", 0.0)
        loader = training_loader(files, to_tensor, 12, 0, workers=0)
        scheduler = make_scheduler(optimizer, "constant", 1, len(loader))
        return train_epoch(
            model, loader, targets, optimizer, scheduler, nn.CrossEntropyLoss(), "cpu", precision, 0, False
        ).loss

    fp32, bf16 = epoch_loss("fp32"), epoch_loss("bf16")
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)  # bf16 rounding shows, faithfully


def test_summaries_with_exactly_five_classes_have_a_top5_and_keep_their_time():
    logits = torch.tensor([[5.0, 4, 3, 2, 1], [0.0, 1, 2, 3, 4]])
    summary = summarize([logits], [torch.tensor([0, 0])], nn.CrossEntropyLoss(), 3.0)
    assert (summary.k, summary.top_k, summary.seconds) == (5, 1.0, 3.0)
    assert summarize([], [], nn.CrossEntropyLoss(), 2.5).seconds == 2.5


def test_a_one_step_cosine_schedule_ends_at_zero():
    model = nn.Linear(2, 2)
    optimizer = make_optimizer([{"params": model.parameters(), "lr": 0.1}], "sgd", 0.0)
    scheduler = make_scheduler(optimizer, "cosine", 1, 1)
    optimizer.step()
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-9)


def test_training_loaders_use_the_decoding_processes_asked_for_or_the_devices_default(data):
    (files, _), _ = data
    assert training_loader(files, to_tensor, 8, 0, workers=0).num_workers == 0
    kept = training_loader(files, to_tensor, 8, 0, workers=1)
    assert kept.num_workers == 1 and kept.persistent_workers  # one set of processes for every epoch
    cores = os.cpu_count() or 1
    assert training_loader(files, to_tensor, 8, 0).num_workers == (0 if cores <= 4 else min(8, cores // 4))
    gpu = training_loader(files, to_tensor, 8, 0, device="cuda:0")
    assert gpu.num_workers == min(8, cores)
