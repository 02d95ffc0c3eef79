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
    top5: float | None = None
    predictions: list[int] = field(default_factory=list)
    targets: list[int] = field(default_factory=list)
    wait_seconds: float = 0.0  # of ``seconds``, spent waiting for decoded images

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


def param_groups(model: nn.Module, lr: float, backbone_lr_mult: float, train_backbone: bool) -> list[dict]:
    """The head at ``lr``; the backbone at ``lr * backbone_lr_mult`` when it trains, else frozen."""
    for p in backbone_parameters(model):
        p.requires_grad_(train_backbone)
    for p in classifier_parameters(model):
        p.requires_grad_(True)
    groups = [{"params": classifier_parameters(model), "lr": lr, "name": "head"}]
    if train_backbone:
        groups.append({"params": backbone_parameters(model), "lr": lr * backbone_lr_mult, "name": "backbone"})
    return groups


def make_optimizer(groups: list[dict], name: str, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, name: str, total_steps: int):
    total_steps = max(1, total_steps)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total_steps
        )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _step: 1.0)


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
    drop_last = len(files) > batch_size and len(files) % batch_size == 1  # a batch of one breaks batch norm
    sampler = EpochSampler(len(files), seed)
    return image_loader(
        files, transform, batch_size, workers, sampler=sampler, drop_last=drop_last, persistent=True, device=device
    )


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
) -> EpochResult:
    """One pass over a training loader (see ``training_loader``) in the order of ``epoch``."""
    set_backbone_mode(model, train_backbone)
    head = model.get_classifier()
    loader.sampler.set_epoch(epoch)
    label_of = torch.as_tensor(list(targets), dtype=torch.long)
    total_loss, correct, seen = 0.0, 0, 0
    start = time.perf_counter()
    batches = WaitClock(loader)
    for step, (images, indices, _bad) in enumerate(batches, 1):
        if images is None:
            continue
        labels = label_of[indices].to(device)
        images = prepare_batch(images, device, precision)
        with autocast(device, precision):
            if train_backbone:
                logits = model(images)
            else:
                with torch.no_grad():
                    features = pooled_features(model, images)
                logits = head(features)
        loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(indices)
        correct += (logits.argmax(1) == labels).sum().item()
        seen += len(indices)
        if on_step is not None:
            on_step(step, len(loader))
    seconds = time.perf_counter() - start
    return EpochResult(total_loss / max(seen, 1), correct / max(seen, 1), seen, seconds, wait_seconds=batches.seconds)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader,
    targets: Sequence[int],
    criterion: nn.Module,
    device: str,
    precision: str,
    on_step: StepCallback | None = None,
) -> EpochResult:
    """Loss, accuracy and predictions over an evaluation loader (``image_loader``, unshuffled)."""
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
    return summarize(logits_all, labels_all, criterion, time.perf_counter() - start)


def summarize(logits_all: list[torch.Tensor], labels_all: list[torch.Tensor], criterion, seconds: float) -> EpochResult:
    if not logits_all:
        return EpochResult(float("nan"), 0.0, 0, seconds)
    logits = torch.cat(logits_all)
    labels = torch.cat(labels_all)
    loss = criterion(logits, labels).item()
    predictions = logits.argmax(1)
    top5 = None
    if logits.shape[1] >= 5:
        top5 = (logits.topk(5, dim=1).indices == labels[:, None]).any(1).float().mean().item()
    return EpochResult(
        loss,
        (predictions == labels).float().mean().item(),
        len(labels),
        seconds,
        top5,
        predictions.tolist(),
        labels.tolist(),
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
def evaluate_head(head: nn.Module, features: torch.Tensor, labels: torch.Tensor, criterion) -> EpochResult:
    head.eval()
    start = time.perf_counter()
    logits = head(features)
    return summarize([logits], [labels], criterion, time.perf_counter() - start)
