"""Choosing ``--precision auto`` by measurement: a short timing of the job's own model in fp32 and in bf16.

CPU flags do not say which is faster: bf16 matmul is about 2.7x fp32 on CPUs with AMX and *slower* than fp32 on
CPUs that have AVX512-BF16 without AMX. So the first job of a kind (inference, training, gradients to the input)
on a model shape times a few batches each way and keeps bf16 only when it is clearly faster. The choice is
cached per machine in ``TLQ_HOME/calibration.json``, under a key that holds the torch version, the CPU model
and flags and the thread count: a new torch or another CPU measures again.
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
CACHE_FILE = "calibration.json"
MARGIN = 1.05  # bf16 must beat fp32 by this factor: a tie or noise keeps fp32, never slower by default
MAX_BATCH = 8  # the calibration's batch: enough to reach the kernels' steady speed, short on big models
ROUNDS = 3  # timed rounds per precision (after one warm-up); the best of them counts
SLOW_STEP_S = 3.0  # a step slower than this is timed once: the difference shows anyway
MIN_IMAGES = 20 * (1 + ROUNDS) * 2 * MAX_BATCH  # a job this short could not win back what measuring costs


@dataclass(frozen=True)
class Workload:
    """What a job will run: ``kind`` of step on ``model`` with batches of ``batch`` images of ``input_shape``.

    ``cast`` says how bf16 runs: under autocast (weights stay fp32), or with the model cast to bf16. ``images``
    is how many images the job will push through the model (None: unknown); a job too short to gain from bf16
    runs fp32 without measuring.
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
    precision: Literal["fp32", "bf16"]
    fp32_s: float | None = None  # seconds per image, as measured
    bf16_s: float | None = None
    cached: bool = False
    reason: str = ""

    @property
    def speedup(self) -> float | None:
        return self.fp32_s / self.bf16_s if self.fp32_s and self.bf16_s else None

    def describe(self) -> str:
        if self.speedup is None:
            return f"{self.precision} ({self.reason})"
        how = "cached measurement" if self.cached else "measured"
        return f"{self.precision}: bf16 runs at {self.speedup:.2f}x fp32 here ({how})"


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
    model = workload.model
    parameters = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape = "x".join(map(str, workload.input_shape))
    return (
        f"{workload.kind} | {workload.label} | {type(model).__name__} {parameters}/{trainable} | {shape} | "
        f"batch {min(workload.batch, MAX_BATCH)} | {'cast' if workload.cast else 'autocast'} | {device}"
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


def choose_precision(workload: Workload, device: str, home: str | os.PathLike | None) -> Choice:
    """fp32 or bf16 for ``workload`` on ``device``: cached when this machine measured it before, else measured."""
    if not bf16_possible(device):
        return Choice("fp32", reason=f"{device} has no bf16 kernels")
    key = f"{machine_fingerprint()} || {workload_key(workload, device)}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    cache = Path(home) / CACHE_FILE if home is not None else None
    known = _read(cache).get(digest) if cache else None
    if known and known.get("key") == key and known.get("precision") in ("fp32", "bf16"):
        return Choice(known["precision"], known.get("fp32_s"), known.get("bf16_s"), cached=True)
    if workload.images is not None and workload.images < MIN_IMAGES:
        return Choice("fp32", reason=f"{workload.images} images are too few to be worth measuring bf16")
    fp32_s, bf16_s = measure(workload, device)
    precision = "bf16" if bf16_s * MARGIN < fp32_s else "fp32"
    choice = Choice(precision, fp32_s, bf16_s)
    if cache is not None:
        entry = {"key": key, "precision": precision, "fp32_s": fp32_s, "bf16_s": bf16_s}
        entry["measured_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        _update(cache, digest, entry)
    return choice


def measure(workload: Workload, device: str) -> tuple[float, float]:
    """Seconds per image of one step of ``workload`` in fp32 and in bf16: the best of a few rounds each,
    the two precisions taking turns so that a busy neighbour slows both alike."""
    import torch

    batch = max(1, min(workload.batch, MAX_BATCH))
    steps = {p: _step(workload, device, p, batch) for p in ("fp32", "bf16")}
    best = {}
    for precision, step in steps.items():  # warm-up: first calls allocate and pick kernels
        best[precision] = _timed(step, device)
    rounds = 1 if max(best.values()) > SLOW_STEP_S else ROUNDS
    best = {p: float("inf") for p in steps}
    for _ in range(rounds):
        for precision, step in steps.items():
            best[precision] = min(best[precision], _timed(step, device))
    del steps
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return best["fp32"] / batch, best["bf16"] / batch


def _timed(step, device: str) -> float:
    import torch

    start = time.perf_counter()
    step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def _step(workload: Workload, device: str, precision: str, batch: int):
    """One step of the workload's kind, on a copy of the model where the step would change it."""
    import torch

    from tlq.plugins.precision import autocast, prepare_batch, prepare_model

    generator = torch.Generator().manual_seed(0)
    images = torch.randn((batch, *workload.input_shape), generator=generator)
    bf16 = precision == "bf16"
    if workload.kind == "training" or (bf16 and workload.cast):
        model = copy.deepcopy(workload.model)  # training changes weights and norm statistics; a cast changes dtype
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
        model.eval()

        def step():
            with torch.inference_mode(), context:
                model(images)
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
        model.eval()
        clean = [p for p in model.parameters() if p.grad is None]  # tasks freeze the weights; a caller may not

        def step():
            pixels = images.detach().requires_grad_(True)
            with context:
                score = model(pixels).float().max(dim=1).values.sum()
            score.backward()
            for p in clean:
                p.grad = None

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
