"""Which compute device this process has, found without initializing CUDA in a parent that will fork."""

from __future__ import annotations

import functools
import os
import subprocess


@functools.cache
def cuda_available() -> bool:
    """True when a CUDA GPU is usable; asks NVML, so a forked child can still initialize CUDA itself. Asked once
    per process: NVML loads its library on every question, three times per job, and GPUs do not come and go
    under a running process."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return torch.cuda.is_available()


def describe_device() -> str:
    """``cuda (NVIDIA H200)`` on GPU hosts, ``cpu (N cores)`` otherwise; never initializes CUDA here."""
    if cuda_available():
        try:  # nvidia-smi answers without touching CUDA in this (soon forking) process
            names = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=10
            ).stdout.split("\n")
            names = [n.strip() for n in names if n.strip()]
        except (OSError, subprocess.SubprocessError):
            names = []
        return f"cuda ({', '.join(names)})" if names else "cuda"
    return f"cpu ({os.cpu_count()} cores)"


def gpu_memory_bytes() -> int | None:
    """The memory of the smallest GPU of this host, from nvidia-smi (CUDA stays uninitialized); None without."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
        sizes = [int(float(line)) * 2**20 for line in out.split() if line.strip()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None
    return min(sizes) if sizes else None


def choose_device(requested: str) -> str:
    """The torch device for a job: ``cuda`` when asked (or ``auto`` on a GPU host), else ``cpu``."""
    from tlq.errors import BadInput

    if requested == "cuda":
        if not cuda_available():
            raise BadInput("this job asks for --device cuda but the worker has no CUDA GPU; resubmit with --device cpu")
        return "cuda"
    if requested == "auto" and cuda_available():
        return "cuda"
    return "cpu"


def device_label(device: str) -> str:
    """What a job ran on, for its ``ran_on`` column."""
    if device == "cuda":
        import torch

        return f"cuda ({torch.cuda.get_device_name(0)})"
    return f"cpu ({os.cpu_count()} cores)"
