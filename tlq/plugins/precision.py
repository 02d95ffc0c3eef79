"""Choosing the numeric precision and memory layout: bf16 autocast and channels_last where the hardware runs
them fast (CUDA; CPUs with AVX512-BF16 or AMX), fp32 elsewhere."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16"]


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """True when /proc/cpuinfo lists AVX512-BF16 or AMX-BF16."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            return bool(flags & {"avx512_bf16", "amx_bf16"})
    return False


def resolve_precision(requested: Precision, device: str) -> Literal["fp32", "bf16"]:
    """The precision to run in: ``auto`` picks bf16 where the device runs it fast."""
    if requested != "auto":
        return requested
    if device.startswith("cuda"):
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def autocast(device: str, precision: str):
    """A bf16 autocast context for ``precision == 'bf16'``, else a no-op."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def prepare_model(model, device: str, precision: str):
    """Moves a model to ``device`` and, with bf16, to channels_last memory (which the bf16 kernels prefer)."""
    import torch

    model = model.to(device)
    if precision == "bf16":
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_batch(batch, device: str, precision: str):
    """Moves an image batch to ``device``, channels_last when running bf16."""
    import torch

    batch = batch.to(device, non_blocking=True)
    if precision == "bf16" and batch.ndim == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
