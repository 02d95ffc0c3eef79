"""The pieces of a training run: parameter groups per strategy, optimizers and schedules, one epoch of
training, evaluation, and checkpoints that a resumed attempt can continue from."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tlq.ml.features import EpochSampler, WaitClock, image_loader, pooled_features
from tlq.ml.images import ImageFile
from tlq.ml.precision import autocast, prepare_batch

StepCallback = Callable[[int, int], None]


@dataclass
class EpochResult:
    """Loss and accuracy over an epoch (or an evaluation pass), and the predictions when asked for."""

    loss: float
    acc: float
    images: int
    seconds: float
    top_k: float | None = None  # the share of images whose class is among the ``k`` most likely
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    wait_seconds: float = 0.0  # of ``seconds``, spent waiting for decoded images
    k: int = 0  # of ``top_k``: the k asked for, capped at the number of classes

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


def classifier_parameters(model: nn.Module) -> list[nn.Parameter]:
    return list(model.get_classifier().parameters())


def backbone_parameters(model: nn.Module) -> list[nn.Parameter]:
    head = {id(p) for p in classifier_parameters(model)}
    return [p for p in model.parameters() if id(p) not in head]


def decay_groups(module: nn.Module, weight_decay: float) -> list[dict]:
    """``module``'s trainable parameters split as timm's train.py splits them: no weight decay on biases, norm
    layers and other 1-d tensors, nor on what the model's own ``no_weight_decay()`` names (position embeddings,
    class tokens); ``weight_decay`` on the rest (``timm.optim.param_groups_weight_decay``)."""
    from timm.optim import param_groups_weight_decay

    skip = module.no_weight_decay() if hasattr(module, "no_weight_decay") else ()
    return param_groups_weight_decay(module, weight_decay, no_weight_decay_list=skip)


def param_groups(
    model: nn.Module, lr: float, backbone_lr_mult: float, train_backbone: bool, weight_decay: float = 0.0
) -> list[dict]:
    """The head at ``lr``; the backbone at ``lr * backbone_lr_mult`` when it trains, else frozen; each split by
    ``decay_groups``. The head's groups come first: the recorded ``lr`` is the first group's."""
    for p in backbone_parameters(model):
        p.requires_grad_(train_backbone)
    for p in classifier_parameters(model):
        p.requires_grad_(True)
    head = {id(p) for p in classifier_parameters(model)}
    split = decay_groups(model, weight_decay)
    groups = []
    for part, part_lr in (("head", lr), ("backbone", lr * backbone_lr_mult)):
        for group in split:
            params = [p for p in group["params"] if (id(p) in head) == (part == "head")]
            if params:
                decay = group["weight_decay"]
                groups.append({"params": params, "lr": part_lr, "weight_decay": decay, "name": part})
    return groups


def make_optimizer(groups: list[dict], name: str, weight_decay: float) -> torch.optim.Optimizer:
    """timm's ``create_optimizer_v2``: ``adamw``, or ``sgd`` (Nesterov momentum 0.9), each group at its own lr and
    weight decay (``param_groups``)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(groups, opt=name, lr=groups[0]["lr"], weight_decay=weight_decay, momentum=0.9)


class PerUpdate:
    """A timm scheduler stepped after every optimizer update, as the loops step torch's schedulers
    (``scheduler.step()``); it and its update count go into checkpoints."""

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler
        self.updates = 0

    def step(self) -> None:
        self.updates += 1
        self.scheduler.step_update(self.updates)

    def state_dict(self) -> dict:
        return {"updates": self.updates, "scheduler": self.scheduler.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        # A checkpoint from before timm's schedulers holds torch's state, whose last_epoch counts the updates.
        self.updates = state["updates"] if "updates" in state else state.get("last_epoch", 0)
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        self.scheduler.step_update(self.updates)


def make_scheduler(
    optimizer: torch.optim.Optimizer, name: str, epochs: int, steps_per_epoch: int, warmup_epochs: int = 0
):
    """The learning rate over ``epochs`` of ``steps_per_epoch`` updates, set after every update.

    ``cosine`` (to 0), ``step`` (x0.1 after each third of the epochs after the warmup) and ``constant`` are
    timm's (``create_scheduler_v2``), after ``warmup_epochs`` of linear warmup from 0 to the groups' own lr;
    ``onecycle`` is torch's, which warms up by itself.
    """
    steps_per_epoch = max(1, steps_per_epoch)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=epochs * steps_per_epoch
        )
    from timm.scheduler import create_scheduler_v2

    warmup_epochs = min(warmup_epochs, epochs - 1)
    scheduler, _ = create_scheduler_v2(
        optimizer,
        sched=name,
        num_epochs=epochs - warmup_epochs,  # after the warmup (warmup_prefix): it ends at --lr, the decay starts there
        decay_epochs=max(1, -(-(epochs - warmup_epochs) // 3)),
        decay_rate=0.1,
        min_lr=0.0,
        warmup_lr=0.0,  # from 0 for every group: a backbone at lr x 0 must stay where it is
        warmup_epochs=warmup_epochs,
        warmup_prefix=True,
        step_on_epochs=False,
        updates_per_epoch=steps_per_epoch,
    )
    return PerUpdate(scheduler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def save_checkpoint(artifacts, name: str, state: dict) -> None:
    """Writes a checkpoint atomically (temporary name, then rename)."""
    with artifacts.target("checkpoint", name) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path) -> dict:
    """Reads a checkpoint with ``weights_only=True``: tensors and plain values, never code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def set_backbone_mode(model: nn.Module, train_backbone: bool) -> None:
    """Training mode for what trains; a frozen backbone stays in eval mode, so batch-norm statistics hold."""
    model.train(train_backbone)
    model.get_classifier().train(True)


def training_loader(
    files: Sequence[ImageFile],
    transform: Callable,
    batch_size: int,
    seed: int,
    workers: int | None = None,
    device: str = "cpu",
):
    """A loader for every epoch of a training run: shuffled per epoch (``loader.sampler.set_epoch``), with
    decoding processes (if any) that persist across epochs instead of starting anew each time."""
    sampler = EpochSampler(len(files), seed)  # under --ddp, this rank's shard
    drop_last = len(sampler) > batch_size and len(sampler) % batch_size == 1  # a batch of one breaks batch norm
    return image_loader(
        files, transform, batch_size, workers, sampler=sampler, drop_last=drop_last, persistent=True, device=device
    )


def train_step(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    criterion: nn.Module,
    device: str,
    precision: str,
    train_backbone: bool,
    wrapped: nn.Module | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One update on one batch: (loss, logits). ``train_epoch`` and the lr range test (``tlq.ml.lr_find``) both
    take it, so the test's curve is the loss of the job's own step. ``wrapped``: what trains (the model, or the
    head alone when the backbone is frozen) in DistributedDataParallel, under ``--ddp``."""
    images = prepare_batch(images, device, precision)
    with autocast(device, precision):
        if train_backbone:
            logits = (model if wrapped is None else wrapped)(images)
        else:
            with torch.no_grad():
                features = pooled_features(model, images)
            logits = (model.get_classifier() if wrapped is None else wrapped)(features)
    loss = criterion(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_epoch(
    model: nn.Module,
    loader,
    targets: Sequence[int],
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    device: str,
    precision: str,
    epoch: int,
    train_backbone: bool,
    on_step: StepCallback | None = None,
    wrapped: nn.Module | None = None,
) -> EpochResult:
    """One pass over a training loader (see ``training_loader``) in the order of ``epoch``; under ``--ddp`` over
    this rank's shard, with loss and accuracy averaged and images counted over every rank."""
    from tlq.ml.distributed import sum_over_ranks, world

    set_backbone_mode(model, train_backbone)
    loader.sampler.set_epoch(epoch)
    label_of = torch.as_tensor(list(targets), dtype=torch.long)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = WaitClock(loader)
    for step, (images, indices, _bad) in enumerate(batches, 1):
        if images is None:
            continue
        labels = label_of[indices].to(device)
        loss, logits = train_step(
            model, images, labels, optimizer, criterion, device, precision, train_backbone, wrapped
        )
        scheduler.step()
        total_loss += loss.item() * len(indices)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(indices)
        if on_step is not None:
            on_step(step, len(loader))
    seconds = time.perf_counter() - start
    # Loss and accuracy of equal shards averaged, images counted, over the ranks (as they are alone).
    loss, acc, images = sum_over_ranks([total_loss / max(seen, 1), correct / max(seen, 1), seen])
    return EpochResult(loss / world(), acc / world(), int(images), seconds, wait_seconds=batches.seconds)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    targets: Sequence[int],
    criterion: nn.Module,
    device: str,
    precision: str,
    on_step: StepCallback | None = None,
    k: int = 5,
) -> EpochResult:
    """Loss, accuracy, top-``k`` accuracy and predictions over an evaluation loader (``image_loader``,
    unshuffled)."""
    model.eval()
    label_of = torch.as_tensor(list(targets), dtype=torch.long)
    logits_all, labels_all = [], []
    start = time.perf_counter()
    for step, (images, indices, _bad) in enumerate(loader, 1):
        if images is not None:
            with autocast(device, precision):
                logits = model(prepare_batch(images, device, precision))
            logits_all.append(logits.float().cpu())
            labels_all.append(label_of[indices])
        if on_step is not None:
            on_step(step, len(loader))
    return summarize(logits_all, labels_all, criterion, time.perf_counter() - start, k)


def summarize(
    logits_all: list[torch.Tensor], labels_all: list[torch.Tensor], criterion, seconds: float, k: int = 5
) -> EpochResult:
    """The pass's loss, accuracy and top-``k`` accuracy, ``k`` capped at the number of classes so that any
    dataset has one (the Oxford-IIIT Pets lab reads top-3 of 37 breeds; two classes give a top-2 of 1)."""
    if not logits_all:
        return EpochResult(float("nan"), 0.0, 0, seconds)
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    loss = criterion(logits, labels).item()
    predictions = logits.argmax(1)
    k = min(k, logits.shape[1])
    top_k = (logits.topk(k, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return EpochResult(
        loss,
        (predictions == labels).float().mean().item(),
        len(labels),
        seconds,
        top_k,
        predictions.tolist(),
        labels.tolist(),
        k=k,
    )


def train_head_epoch(
    head: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    criterion: nn.Module,
    batch_size: int,
    seed: int,
) -> EpochResult:
    """One epoch of a linear head on features computed once: no backbone forward at all."""
    head.train()
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    total_loss, correct = 0.0, 0
    start = time.perf_counter()
    for i in range(0, len(order), batch_size):
        batch = order[i : i + batch_size]
        logits = head(features[batch])
        loss = criterion(logits, labels[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(batch)
        correct += (logits.argmax(1) == labels[batch]).sum().item()
    seconds = time.perf_counter() - start
    return EpochResult(total_loss / len(labels), correct / len(labels), len(labels), seconds)


@torch.no_grad()
def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, criterion, k: int = 5) -> EpochResult:
    head.eval()
    start = time.perf_counter()
    logits = head(features)
    return summarize([logits], [labels], criterion, time.perf_counter() - start, k)
