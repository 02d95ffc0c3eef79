"""Choosing ``--precision auto`` by measurement: a short timing of the job's own model in each way it could run.

CPU flags do not say which is faster: bf16 matmul is about 2.7x fp32 on CPUs with AMX and *slower* than fp32 on
some CPUs that have AVX512-BF16 without AMX (and 4x faster on others). Memory layout matters as much:
channels_last ran convolutions 1.3-1.9x faster than the default layout in fp32 on one 2-core machine. So the
first job of a kind (inference, training, gradients to the input) on a model shape times a few batches in each
of ``CANDIDATES`` and keeps the fastest, where it clearly beats plain fp32. The choice is cached per machine in
``TLQ_HOME/calibration.json``, under a key that holds the torch version, the CPU model and flags and the thread
count: a new torch or another CPU measures again.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tlq.ml.precision import Precision, Resolved

Kind = Literal["inference", "training", "input-gradient"]
# The ways a step can run (tlq.ml.precision.Resolved): plain fp32, fp32 in channels_last memory, and bf16
# (in channels_last memory, which its kernels prefer).
CANDIDATES = ("fp32", "fp32-cl", "bf16")
CACHE_FILE = "calibration.json"
VERSION = 3  # in every key: entries written by an older way of measuring are measured again
MARGIN = 1.05  # another way must beat plain fp32 by this factor: a tie or noise keeps fp32, never slower
MAX_BATCH = 8  # the calibration's batch: enough to reach the kernels' steady speed, short on big models
ROUNDS = 3  # timed rounds per way (after one warm-up); the best of them counts
SLOW_STEP_S = 3.0  # a step slower than this is timed once: the difference shows anyway
# A job with fewer images than the measurement itself pushes through the model runs plain fp32 without
# measuring (a choice measured before, by any job, is used whatever the job's size).
MIN_IMAGES = (1 + ROUNDS) * len(CANDIDATES) * MAX_BATCH


@dataclass(frozen=True)
class Workload:
    """What a job will run: ``kind`` of step on ``model`` with batches of ``batch`` images of ``input_shape``.

    ``cast`` says how bf16 runs: under autocast (weights stay fp32), or with the model cast to bf16. ``images``
    is how many images the job will push through the model (None: unknown); a job shorter than the
    measurement runs plain fp32 without measuring.
    """

    kind: Kind
    model: object  # torch.nn.Module
    input_shape: tuple[int, int, int]
    batch: int
    label: str
    cast: bool = False
    images: int | None = None


@dataclass(frozen=True)
class Choice:
    precision: str  # one of CANDIDATES
    seconds: dict[str, float] | None = None  # seconds per image of each way measured
    cached: bool = False
    reason: str = ""

    def speedup(self, way: str) -> float | None:
        """How many times faster than plain fp32 ``way`` ran (None where it was not measured)."""
        seconds = self.seconds or {}
        return seconds["fp32"] / seconds[way] if seconds.get("fp32") and seconds.get(way) else None

    def describe(self) -> str:
        if not self.seconds:
            return f"{self.precision} ({self.reason})"
        how = "cached measurement" if self.cached else "measured"
        speeds = ", ".join(f"{way} {self.speedup(way):.2f}x" for way in self.seconds if way != "fp32")
        return f"{self.precision}: against plain fp32 here, {speeds} ({how})"


@functools.cache
def machine_fingerprint() -> str:
    """What a measurement depends on besides the model: torch, the CPU model and its flags, the threads."""
    import torch

    from tlq.ml.precision import cpu_info

    model, all_flags = cpu_info()
    cpu = (platform.processor() or platform.machine()) if model == "unknown" else model
    flags = " ".join(sorted(f for f in all_flags if f.startswith(("amx", "avx512"))))
    return f"torch {torch.__version__} | {cpu} | {flags} | threads {torch.get_num_threads()}"


def workload_key(workload: Workload, device: str) -> str:
    """What a measurement is for. The model counts without its classifier, so feature-extract (no head), predict
    (the model's own head) and a linear probe (a new head) on one backbone share a choice, and with it the
    feature cache, whose key holds the precision."""
    model = workload.model
    head = {id(p) for p in _classifier_parameters(model)}
    body = [p for p in model.parameters() if id(p) not in head]
    parameters = sum(p.numel() for p in body)
    trainable = sum(p.numel() for p in body if p.requires_grad)
    shape = "x".join(map(str, workload.input_shape))
    return (
        f"{workload.kind} | {workload.label} | {type(model).__name__} {parameters}/{trainable} | {shape} | "
        f"batch {min(workload.batch, MAX_BATCH)} | {'cast' if workload.cast else 'autocast'} | {device} | v{VERSION}"
    )


def _classifier_parameters(model) -> list:
    """The parameters of a timm model's classifier: ``get_classifier()`` gives a module, a tuple of them (a
    distilled model's two heads: deit, levit, efficientformer) or something else (none then)."""
    import torch

    get_classifier = getattr(model, "get_classifier", None)
    if not callable(get_classifier):
        return []
    try:
        heads = get_classifier()
    except Exception:  # a model that names no classifier: count the whole model
        return []
    heads = heads if isinstance(heads, tuple | list) else (heads,)
    return [p for head in heads if isinstance(head, torch.nn.Module) for p in head.parameters()]


def bf16_possible(device: str) -> bool:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device != "cpu":
        return False
    with contextlib.suppress(Exception):
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def candidates(device: str) -> tuple[str, ...]:
    """The ways ``device`` can run a step: bf16 only where it has bf16 kernels."""
    if not (device == "cpu" or device.startswith("cuda")):
        return ("fp32",)
    return CANDIDATES if bf16_possible(device) else tuple(c for c in CANDIDATES if c != "bf16")


def choose_precision(workload: Workload, device: str, home: str | os.PathLike | None) -> Choice:
    """The fastest way to run ``workload`` on ``device`` (plain fp32 unless another clearly beats it): cached when
    this machine measured it before, else measured."""
    ways = candidates(device)
    if len(ways) == 1:
        return Choice("fp32", reason=f"{device} has nothing to measure against plain fp32")
    key, digest = measurement_key(workload, device)
    known = read_measurement(home, digest)
    if _trusted(known, key, ways):
        return Choice(known["precision"], known["seconds"], cached=True)
    if workload.images is not None and workload.images < MIN_IMAGES:
        return Choice("fp32", reason=f"{workload.images} images are too few to be worth measuring the others")
    seconds = measure(workload, device, ways)
    fastest = min(seconds, key=seconds.get)
    precision = fastest if seconds[fastest] * MARGIN < seconds["fp32"] else "fp32"
    record_measurement(home, digest, {"key": key, "precision": precision, "seconds": seconds})
    return Choice(precision, seconds)


def known_seconds(workload: Workload, device: str, home: str | os.PathLike | None) -> dict[str, float] | None:
    """Seconds per image of ``workload`` in each way, as an earlier ``--precision auto`` measured them on this
    machine; None where none did (nothing is measured here)."""
    key, digest = measurement_key(workload, device)
    known = read_measurement(home, digest)
    return dict(known["seconds"]) if _trusted(known, key, candidates(device)) else None


def measurement_key(workload: Workload, device: str, what: str = "") -> tuple[str, str]:
    """The key of a cached measurement of ``workload`` on ``device`` on this machine, and the digest it is filed
    under in ``calibration.json``. ``what`` tells another measurement of the same workload (a compiled forward)
    from the precision choice; it comes second, so the workload stays the last part of every key."""
    parts = [machine_fingerprint(), *([what] if what else []), workload_key(workload, device)]
    key = " || ".join(parts)
    return key, hashlib.sha256(key.encode()).hexdigest()[:24]


def read_measurement(home: str | os.PathLike | None, digest: str):
    """The entry filed under ``digest`` in ``home``'s calibration.json (None: none, or no home); unchecked."""
    return _read(Path(home) / CACHE_FILE).get(digest) if home is not None else None


def record_measurement(home: str | os.PathLike | None, digest: str, entry: dict) -> None:
    """Files ``entry`` under ``digest`` in ``home``'s calibration.json, stamped with the time; no home: nothing."""
    if home is not None:
        entry = {**entry, "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}
        _update(Path(home) / CACHE_FILE, digest, entry)


def measure(workload: Workload, device: str, ways: tuple[str, ...] = CANDIDATES) -> dict[str, float]:
    """Seconds per image of one step of ``workload`` in each of ``ways``: the best of a few rounds each.

    One way at a time, so that at most one copy of the model exists beside the job's own (a training step, or
    a model cast to bf16, needs one); the other ways run the job's model itself and put its memory layout back.
    """
    import torch

    batch = max(1, min(workload.batch, MAX_BATCH))
    best = {}
    for way in ways:
        with _way(workload, device, way, batch) as step:
            warm_up = _timed(step, device)  # first calls allocate and pick kernels
            rounds = 1 if warm_up > SLOW_STEP_S else ROUNDS
            best[way] = min(_timed(step, device) for _ in range(rounds))
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return {way: seconds / batch for way, seconds in best.items()}


def _timed(step, device: str) -> float:
    import torch

    start = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@contextlib.contextmanager
def _way(workload: Workload, device: str, precision: str, batch: int):
    """Yields one step of the workload's kind run the ``precision`` way; afterwards the job's model is as it was
    (a step that would change its weights, norm statistics or dtype runs on a copy)."""
    import torch

    from tlq.ml.precision import autocast, channels_last, prepare_batch

    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, *workload.input_shape), generator=generator)
    bf16 = precision == "bf16"
    copied = workload.kind == "training" or (bf16 and workload.cast)
    model = copy.deepcopy(workload.model) if copied else workload.model
    moved = False
    try:
        if bf16 and workload.cast:
            model = model.to(torch.bfloat16)
        model = model.to(device)
        if channels_last(precision):
            model = model.to(memory_format=torch.channels_last)
            moved = not copied
        images = prepare_batch(images, device, precision)
        if bf16 and workload.cast:
            images = images.to(torch.bfloat16)
        context = contextlib.nullcontext() if workload.cast else autocast(device, precision)
        yield _step_of(workload.kind, model, images, context)
    finally:
        if moved:  # the job's own model, back in the default layout
            model.to(memory_format=torch.contiguous_format)


def _step_of(kind: Kind, model, images, context):
    import torch

    was_training = model.training
    if kind == "training":
        model.train()

        def step():
            with context:
                loss = model(images).float().square().mean()
            if loss.requires_grad:  # a frozen model trains nothing: its step is the forward alone
                loss.backward()
            model.zero_grad(set_to_none=True)

    elif kind == "inference":

        def step():  # in eval mode every time (a job may hand over its model in training mode), then as it was
            model.eval()
            try:
                with torch.inference_mode(), context:
                    model(images)
            finally:
                model.train(was_training)

    else:

        def step():  # gradients to the input alone: the weights' own gradients stay as the job left them
            model.eval()
            try:
                pixels = images.detach().requires_grad_(True)
                with context:
                    score = model(pixels).float().max(dim=1).values.sum()
                torch.autograd.grad(score, pixels)
            finally:
                model.train(was_training)

    return step


def _trusted(entry, key: str, ways: tuple[str, ...]) -> bool:
    """Whether a cached entry is one this version wrote for this key: anything else is measured again."""
    if not isinstance(entry, dict) or entry.get("key") != key or entry.get("precision") not in ways:
        return False
    seconds = entry.get("seconds")
    return (
        isinstance(seconds, dict)
        and "fp32" in seconds
        and all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in seconds.values())
    )


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _update(path: Path, digest: str, entry: dict) -> None:
    """Adds one entry, keeping the others; written whole and renamed, so a reader never sees half a file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = _read(path)
        data[digest] = entry
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".calibration-", suffix=".json")
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:  # a read-only home: measure again next time
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def resolve_precision(
    requested: Precision,
    device: str,
    workload: Workload | None = None,
    home=None,
    logger: logging.Logger | None = None,
) -> Resolved:
    """How to run. ``auto`` measures ``workload`` each way on this machine (once; the choice is cached in
    ``home``) and leaves plain fp32 only for a way that is clearly faster; with no workload to measure it keeps
    fp32 on a CPU and takes bf16 on a CUDA device that supports it."""
    if requested != "auto":
        return requested
    if workload is None:
        if device.startswith("cuda"):
            import torch

            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "fp32"
    choice = choose_precision(workload, device, home)
    logger = logger or logging.getLogger("tlq.precision")
    logger.info("precision auto for %s (%s): %s", workload.label, workload.kind, choice.describe())
    return choice.precision
