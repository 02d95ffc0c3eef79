"""Batched, pooled pre-logits features of image files, the work feature-extract, linear probes and predict
share. Files that cannot be decoded are skipped with their reason."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from tlq.ml.compiling import CompiledForward, Plan
from tlq.ml.images import ImageFile, UnreadableImage, load_rgb
from tlq.ml.npy_writer import NpyWriter  # noqa: F401 - moved; still reachable as features.NpyWriter
from tlq.ml.precision import autocast, prepare_batch, prepare_model


class ImageFileDataset(Dataset):
    """Image files through a transform; an unreadable file yields ``None`` and its reason instead of raising."""

    def __init__(self, files: Sequence[ImageFile], transform: Callable) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int):
        try:
            return self.transform(load_rgb(self.files[index].path)), index, ""
        except UnreadableImage as exc:
            return None, index, str(exc)


def collate_skipping(batch):
    """Stacks the readable images of a batch and passes the unreadable ones on as (index, reason)."""
    good = [(x, i) for x, i, _ in batch if x is not None]
    bad = [(i, reason) for x, i, reason in batch if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, [i for _, i in good], bad


class EpochSampler(Sampler[int]):
    """A shuffled order fixed by (seed, epoch): an epoch gets the same order again after a resume, and one
    loader with persistent workers serves every epoch."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        from tlq.ml.distributed import shard

        generator = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        return iter(shard(torch.randperm(self.size, generator=generator).tolist()))  # a --ddp rank's share

    def __len__(self) -> int:
        from tlq.ml.distributed import world

        return -(-self.size // world())


def inference_batch_size(requested: int | None, device: str) -> int:
    """Images per forward pass when the user names none: 16 on a CPU, 64 on a GPU.

    On 2 cores with bf16, resnet50 feature extraction ran at 52 img/s in batches of 16 against 44 in batches
    of 32 (the activations of a batch of 16 stay in cache); a GPU wants larger batches to keep busy.
    """
    if requested is not None:
        return requested
    return 64 if device.startswith("cuda") else 16


def loader_workers(requested: int | None, num_files: int, batch_size: int, device: str = "cpu") -> int:
    """DataLoader processes: as asked; else, for a GPU, one per core up to 8; for a CPU model, none on
    small machines and a quarter of the cores (up to 8) on large ones; none for a batch or two of work.

    On a CPU the model's threads already use every core, and decoding processes preempt them: on 2 cores,
    resnet18 training ran at 27 img/s with no loader process against 23-25 with one or two, and resnet50
    feature extraction was within noise either way (29-32 img/s).
    """
    if requested is not None:
        return requested
    if num_files <= 2 * batch_size:
        return 0
    cores = os.cpu_count() or 1
    if device.startswith("cuda"):
        return min(8, cores)
    return 0 if cores <= 4 else min(8, cores // 4)


def image_loader(
    files: Sequence[ImageFile],
    transform: Callable,
    batch_size: int,
    workers: int | None = None,
    sampler: Sampler | None = None,
    drop_last: bool = False,
    persistent: bool = False,
    device: str = "cpu",
) -> DataLoader:
    """Batches of decoded, transformed images; unreadable files come out as (index, reason) instead."""
    n = loader_workers(workers, len(files), batch_size, device)
    return DataLoader(
        ImageFileDataset(files, transform),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=n,
        collate_fn=collate_skipping,
        drop_last=drop_last,
        persistent_workers=persistent and n > 0,
        prefetch_factor=4 if n else None,
    )


class WaitClock:
    """Iterates ``batches`` and adds up, in ``seconds``, the time spent waiting for the next one: the time the
    model sat idle for want of data."""

    def __init__(self, batches) -> None:
        self.batches, self.seconds = batches, 0.0

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self):
        asked = time.perf_counter()
        for batch in self.batches:
            self.seconds += time.perf_counter() - asked
            yield batch
            asked = time.perf_counter()


@dataclass
class FeatureResult:
    """Features of the readable files, in file order, and the files skipped with their reasons."""

    features: np.ndarray
    kept: list[int]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    cached: int = 0
    wait_seconds: float = 0.0  # of ``seconds``, spent waiting for decoded images
    compile_metrics: dict[str, float] = field(default_factory=dict)  # CompiledForward.metrics(), where planned

    @property
    def images_per_second(self) -> float:
        return len(self.kept) / self.seconds if self.seconds > 0 else 0.0

    @property
    def data_wait_share(self) -> float:
        return self.wait_seconds / self.seconds if self.seconds > 0 else 0.0


@torch.inference_mode()
def extract_features(
    model: torch.nn.Module,
    files: Sequence[ImageFile],
    transform: Callable,
    device: str = "cpu",
    precision: str = "fp32",
    batch_size: int = 32,
    workers: int | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    forward: Callable | None = None,
    on_first_batch: Callable[[], None] | None = None,
) -> FeatureResult:
    """Runs ``model`` (a feature extractor, ``num_classes=0``) over ``files``.

    Args:
        on_batch: Called after each batch with (files done, files in all); may raise to stop.
        forward: What to compute from a batch instead of ``model(batch)`` (pooled features of a model that
            has a head, say).
        on_first_batch: Called once, when the first batch is ready to enter the model.
    """
    forward = forward or model
    prepare_model(model.eval(), device, precision)
    chunks: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    start = time.perf_counter()
    done = 0
    batches = WaitClock(image_loader(files, transform, batch_size, workers, device=device))
    for images, indices, bad in batches:
        skipped.extend(bad)
        if images is not None:
            if on_first_batch is not None and not kept:
                on_first_batch()
            with autocast(device, precision):
                out = forward(prepare_batch(images, device, precision))
            chunks.append(out.float().cpu().numpy())
            kept.extend(indices)
        done += len(indices) + len(bad)
        if on_batch is not None:
            on_batch(done, len(files))
    width = chunks[0].shape[1] if chunks else 0
    features = np.concatenate(chunks) if chunks else np.zeros((0, width), dtype=np.float32)
    seconds = time.perf_counter() - start
    return FeatureResult(features.astype(np.float32, copy=False), kept, skipped, seconds, 0, batches.seconds)


def pooled_features(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The pooled pre-logits features of a timm model that keeps its classifier."""
    return model.forward_head(model.forward_features(images), pre_logits=True)


def scan_images(
    files: Sequence[ImageFile], workers: int | None = None, on_batch: Callable[[int, int], None] | None = None
) -> tuple[list[int], list[tuple[int, str]]]:
    """Decodes every file once, in parallel, before training; returns (readable indices, skipped with reasons)."""
    readable: list[int] = []
    skipped: list[tuple[int, str]] = []
    done = 0
    # Nothing else runs during the scan, so every core decodes.
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    for _, indices, bad in image_loader(files, _nothing, batch_size=64, workers=workers):
        readable.extend(indices)
        skipped.extend(bad)
        done += len(indices) + len(bad)
        if on_batch is not None:
            on_batch(done, len(files))
    return sorted(readable), sorted(skipped)


def _nothing(_image) -> torch.Tensor:
    return torch.zeros(0)


# Raise whenever the feature code changes what it computes (pooling, batching, dtype): old cached vectors then
# stop matching any key and age out of the cache.
FEATURE_CODE_VERSION = 2


def describe_transform(transform) -> str:
    """Every parameter of a preprocessing pipeline, exactly: each step's type and attributes (sizes, crop,
    interpolation, normalization constants at full precision; torchvision's repr rounds them to 4 places)."""
    import json

    def plain(value):
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, list | tuple):
            return [plain(v) for v in value]
        return value if isinstance(value, int | float | str | bool | type(None)) else str(value)

    steps = getattr(transform, "transforms", [transform])
    return json.dumps(
        [
            [type(step).__name__, {k: plain(v) for k, v in sorted(vars(step).items()) if not k.startswith("_")}]
            for step in steps
        ]
    )


CHUNK_FILES = 4096  # files per pass: a job holds at most this many files' features in memory while streaming


def pooled_features_of(
    ctx,
    backbone,
    files: Sequence[ImageFile],
    transform,
    precision: str,
    batch_size: int,
    workers: int | None,
    stage: str,
    into: NpyWriter | None = None,
    compile_plan: Plan | None = None,
) -> FeatureResult:
    """Pooled pre-logits features of ``files`` for a job, served from the feature cache where they are there.

    Only the files the cache lacks go through the model; what they yield is stored for next time. Random
    initializations (no weights file) are never cached. The files go through in chunks of ``CHUNK_FILES``; with
    ``into`` each chunk's rows are written there, in file order, and the result holds no rows (an empty array
    of the features' width), so memory stays flat however many files there are. A ``compile_plan`` that
    compiles runs the forward through ``CompiledForward``, compiled once for all the chunks.
    """
    forward = functools.partial(pooled_features, backbone.model)
    compiled = None
    if compile_plan is not None and compile_plan.compile:
        forward = compiled = CompiledForward(forward, batch_size, compile_plan, ctx.env.settings.home, ctx.log)
    cache = ctx.feature_cache if backbone.weights_file is not None else None
    weights = cache.weights_digest(backbone.weights_file) if cache is not None else None
    key = None
    if cache is not None and weights is not None:
        key = cache.model_key(
            code=FEATURE_CODE_VERSION,
            arch=backbone.arch,
            weights=weights,
            # The transform the job actually applies (size, crop, interpolation, mean/std), not the backbone's
            # defaults: a job at --image-size 32 must never serve features to one at the default size.
            transform=describe_transform(transform),
            precision=precision,
            device=ctx.device.split(":")[0],
            output="pooled",
            # Features of a job that plans to compile are kept apart from eager ones: fused, frozen kernels round
            # differently (test_resnet in fp32: by about 1e-7), and such a job runs some batches eager (the timed
            # ones, a short last one, all after a fallback), so its features are a mix that an eager job (--compile
            # off, a short auto job) must not be served, nor serve. Eager jobs keep the key they always had.
            **({"forward": "compile planned"} if compiled is not None else {}),
        )
    start = time.perf_counter()
    kept: list[int] = []
    skipped: list[tuple[int, str]] = []
    parts: list[np.ndarray] = []
    wait, cached, width = 0.0, 0, 0
    try:
        for first in range(0, len(files), CHUNK_FILES):
            chunk = files[first : first + CHUNK_FILES]
            part = _chunk_features(
                ctx,
                backbone,
                chunk,
                first,
                len(files),
                transform,
                precision,
                batch_size,
                workers,
                stage,
                cache if key else None,
                key,
                forward,
            )
            kept.extend(first + i for i in part.kept)
            skipped.extend((first + i, reason) for i, reason in part.skipped)
            wait, cached = wait + part.wait_seconds, cached + part.cached
            width = part.features.shape[1] if len(part.features) else width
            if into is not None:
                if len(part.features):
                    into.append(part.features)
            else:
                parts.append(part.features)
    finally:
        if compiled is not None:
            compiled.close()
    rows = [p for p in parts if len(p)]
    features = np.concatenate(rows) if rows else np.zeros((0, width), dtype=np.float32)
    compile_metrics = compiled.metrics() if compiled is not None else {}
    return FeatureResult(features, kept, skipped, time.perf_counter() - start, cached, wait, compile_metrics)


def _chunk_features(
    ctx, backbone, files, first, total, transform, precision, batch_size, workers, stage, cache, key, forward
):
    """One chunk of ``pooled_features_of``: indices in the result are positions in ``files``."""
    model = backbone.model

    def compute(subset: Sequence[ImageFile], done_before: int) -> FeatureResult:
        return extract_features(
            model,
            subset,
            transform,
            ctx.device,
            precision,
            batch_size,
            workers,
            on_batch=lambda done, _n: ctx.progress(done_before + done, total, stage),
            forward=forward,
            on_first_batch=ctx.mark_first_batch,
        )

    if cache is None:
        return compute(files, first)
    from tlq.ml.feature_cache import file_digest

    digests = [file_digest(f.path) for f in files]
    found = cache.lookup(key, [d for d in digests if d])
    missing = [i for i, d in enumerate(digests) if d not in found]
    computed = compute([files[i] for i in missing], first + len(files) - len(missing))
    fresh = {digests[missing[j]]: computed.features[row] for row, j in enumerate(computed.kept) if digests[missing[j]]}
    cache.store(key, fresh)
    rows: dict[int, np.ndarray] = {i: found[d] for i, d in enumerate(digests) if d in found}
    rows.update({missing[j]: computed.features[row] for row, j in enumerate(computed.kept)})
    kept = sorted(rows)
    width = next(iter(rows.values())).shape[0] if rows else 0
    features = np.stack([rows[i] for i in kept]).astype(np.float32) if rows else np.zeros((0, width), np.float32)
    skipped = sorted((missing[j], reason) for j, reason in computed.skipped)
    return FeatureResult(features, kept, skipped, 0.0, len(files) - len(missing), computed.wait_seconds)
