"""Choosing the numeric precision and memory layout of a job's steps: for ``--precision auto`` the fastest of plain
fp32, fp32 in channels_last memory and bf16 autocast in channels_last memory, as measured on this machine
(``tlq.ml.calibration``); what the user asked for otherwise."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path
from typing import Literal

Precision = Literal["auto", "fp32", "bf16"]  # what a job asks for
# How a job runs: plain fp32 (the default memory layout), fp32 with models and batches in channels_last memory,
# or bf16 autocast in channels_last memory. Only ``auto`` chooses fp32-cl.
Resolved = Literal["fp32", "fp32-cl", "bf16"]


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags from /proc/cpuinfo ("unknown" and none where there is no such file)."""
    model, flags = "unknown", frozenset()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model == "unknown":
            model = value.strip()
        elif key.strip() == "flags":
            flags = frozenset(value.split())
            break  # the first CPU's block says it for all
    return model, flags


def cpu_flags() -> frozenset[str]:
    """The CPU's flags from /proc/cpuinfo (empty where there is none)."""
    return cpu_info()[1]


def autocast(device: str, precision: str):
    """A bf16 autocast context for ``precision == 'bf16'``, else a no-op."""
    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


def channels_last(precision: str) -> bool:
    """Whether ``precision`` (a Resolved way) keeps models and image batches in channels_last memory."""
    return precision in ("fp32-cl", "bf16")


def prepare_model(model, device: str, precision: str):
    """Moves a model to ``device`` and, for fp32-cl and bf16, to channels_last memory."""
    import torch

    model = model.to(device)
    if channels_last(precision):
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_batch(batch, device: str, precision: str):
    """Moves an image batch to ``device``, in channels_last memory for fp32-cl and bf16."""
    import torch

    batch = batch.to(device, non_blocking=True)
    if channels_last(precision) and batch.ndim == 4:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch
