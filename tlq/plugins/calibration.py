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
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Kind = Literal["inference", "training", "input-gradient"]
# The ways a step can run (tlq.plugins.precision.Resolved): plain fp32, fp32 in channels_last memory, and bf16
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

    from tlq.plugins.precision import cpu_info

    model, all_flags = cpu_info()
    cpu = (platform.processor() or platform.machine()) if model == "unknown" else model
    flags = " ".join(sorted(f for f in all_flags if f.startswith(("amx", "avx512"))))
    return f"torch {torch.__version__} | {cpu} | {flags} | threads {torch.get_num_threads()}"


def workload_key(workload: Workload, device: str) -> str:
    """What a measurement is for. The model counts without its classifier, so feature-extract (no head), predict
    (the model's own head) and a linear probe (a new head) on one backbone share a choice, and with it the
    feature cache, whose key holds the precision."""
    model = workload.model
    get_classifier = getattr(model, "get_classifier", None)
    head = {id(p) for p in get_classifier().parameters()} if callable(get_classifier) else set()
    body = [p for p in model.parameters() if id(p) not in head]
    parameters = sum(p.numel() for p in body)
    trainable = sum(p.numel() for p in body if p.requires_grad)
    shape = "x".join(map(str, workload.input_shape))
    return (
        f"{workload.kind} | {workload.label} | {type(model).__name__} {parameters}/{trainable} | {shape} | "
        f"batch {min(workload.batch, MAX_BATCH)} | {'cast' if workload.cast else 'autocast'} | {device} | v{VERSION}"
    )


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
    key = f"{machine_fingerprint()} || {workload_key(workload, device)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    cache = Path(home) / CACHE_FILE if home is not None else None
    known = _read(cache).get(digest) if cache else None
    if known and known.get("key") == key and known.get("precision") in ways:
        return Choice(known["precision"], known.get("seconds"), cached=True)
    if workload.images is not None and workload.images < MIN_IMAGES:
        return Choice("fp32", reason=f"{workload.images} images are too few to be worth measuring the others")
    seconds = measure(workload, device, ways)
    fastest = min(seconds, key=seconds.get)
    precision = fastest if seconds[fastest] * MARGIN < seconds["fp32"] else "fp32"
    choice = Choice(precision, seconds)
    if cache is not None:
        entry = {"key": key, "precision": precision, "seconds": seconds}
        entry["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _update(cache, digest, entry)
    return choice


def measure(workload: Workload, device: str, ways: tuple[str, ...] = CANDIDATES) -> dict[str, float]:
    """Seconds per image of one step of ``workload`` in each of ``ways``: the best of a few rounds each, the ways
    taking turns so that a busy neighbour slows all alike."""
    import torch

    batch = max(1, min(workload.batch, MAX_BATCH))
    steps = {way: _step(workload, device, way, batch) for way in ways}
    best = {}
    for way, step in steps.items():  # warm-up: first calls allocate and pick kernels
        best[way] = _timed(step, device)
    rounds = 1 if max(best.values()) > SLOW_STEP_S else ROUNDS
    best = {way: float("inf") for way in steps}
    for _ in range(rounds):
        for way, step in steps.items():
            best[way] = min(best[way], _timed(step, device))
    del steps
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


def _step(workload: Workload, device: str, precision: str, batch: int):
    """One step of the workload's kind run the ``precision`` way, on a copy of the model where the step or the
    way would change it."""
    import torch

    from tlq.plugins.precision import autocast, prepare_batch, prepare_model

    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, *workload.input_shape), generator=generator)
    bf16 = precision == "bf16"
    if workload.kind == "training" or precision != "fp32":
        # training changes weights and norm statistics; a cast changes dtype; channels_last the memory layout
        model = copy.deepcopy(workload.model)
    else:
        model = workload.model
    if bf16 and workload.cast:
        model = model.to(torch.bfloat16)
    model = prepare_model(model, device, precision)
    images = prepare_batch(images, device, precision)
    if bf16 and workload.cast:
        images = images.to(torch.bfloat16)
    context = contextlib.nullcontext() if workload.cast else autocast(device, precision)

    if workload.kind == "inference":
        was_training = model.training

        def step():  # in eval mode every time (a job may hand over its model in training mode), then as it was
            model.eval()
            try:
                with torch.inference_mode(), context:
                    model(images)
            finally:
                model.train(was_training)

    elif workload.kind == "training":
        model.train()

        def step():
            with context:
                loss = model(images).float().square().mean()
            if loss.requires_grad:  # a frozen model trains nothing: its step is the forward alone
                loss.backward()
            model.zero_grad(set_to_none=True)

    else:
        was_training = model.training
        clean = [p for p in model.parameters() if p.grad is None]  # tasks freeze the weights; a caller may not

        def step():
            model.eval()
            try:
                pixels = images.detach().requires_grad_(True)
                with context:
                    score = model(pixels).float().max(dim=1).values.sum()
                score.backward()
            finally:
                for p in clean:
                    p.grad = None
                model.train(was_training)

    return step


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
