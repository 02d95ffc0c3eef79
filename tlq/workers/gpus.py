"""`tlq worker --gpus all|N|0,2,5`: one pool process per GPU, each seeing only its own.

The GPUs are read from nvidia-smi (CUDA stays uninitialized in the worker's main process, which forks the pool).
A worker refuses a GPU that a process outside it computes on, or that another tlq worker of this host owns (a lock
file per GPU, held while the worker lives). Each pool process sets ``CUDA_VISIBLE_DEVICES`` to its GPU as it starts,
before anything touches CUDA, by its pool index: a pool process that is replaced takes the same GPU again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from tlq.errors import BadInput


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_bytes: int

    def describe(self) -> str:
        return f"{self.index}: {self.name}, {self.memory_bytes / 2**30:.0f} GiB"


def nvidia_smi(*query: str) -> str:
    try:
        done = subprocess.run(["nvidia-smi", *query], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


def host_gpus() -> list[Gpu]:
    """This host's GPUs, from nvidia-smi; none without it."""
    return parse_gpu_table(nvidia_smi("--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"))


def visible_gpus(gpus: list[Gpu] | None = None, visible: str | None = None) -> list[Gpu]:
    """The host's GPUs this process may use: all that nvidia-smi lists, or those ``CUDA_VISIBLE_DEVICES`` names
    (by index or UUID; CUDA ignores the list from its first unknown entry on)."""
    gpus = host_gpus() if gpus is None else gpus
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    if visible is None:
        return gpus
    picked = []
    for name in (v.strip() for v in visible.split(",")):
        match = next((g for g in gpus if name in (str(g.index), g.uuid)), None)
        if match is None:
            break
        picked.append(match)
    return picked


def parse_gpu_table(text: str) -> list[Gpu]:
    gpus = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            with contextlib.suppress(ValueError):
                gpus.append(Gpu(int(parts[0]), parts[1], parts[2], int(float(parts[3]) * 2**20)))
    return gpus


def choose(spec: str, available: list[Gpu]) -> list[Gpu]:
    """The GPUs ``--gpus`` names: ``all``, a count ``N`` (the first N) or a list of indices ``0,2,5``."""
    if not available:
        raise BadInput("this machine has no CUDA GPU (nvidia-smi lists none); drop --gpus to run CPU jobs")
    text = spec.strip().lower()
    by_index = {g.index: g for g in available}
    have = f"this host has {len(available)} ({', '.join(str(g.index) for g in available)})"
    if text == "all":
        return list(available)
    if text.isdigit() and not (len(text) > 1 and text.startswith("0")):  # a count; "02" is an index
        count = int(text)
        if not 1 <= count <= len(available):
            raise BadInput(f"--gpus {count}: {have}; give a count from 1 to {len(available)}, a list or all")
        return list(available[:count])
    picked = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit():
            raise BadInput(f"--gpus {spec!r}: give all, a count, or GPU indices such as 0,2,5")
        if int(item) not in by_index:
            raise BadInput(f"--gpus {spec!r}: there is no GPU {item}; {have}")
        if by_index[int(item)] in picked:
            raise BadInput(f"--gpus {spec!r}: GPU {item} is named twice")
        picked.append(by_index[int(item)])
    return picked


def foreign_users(gpus: list[Gpu], ours: set[int]) -> dict[int, list[int]]:
    """{GPU index: pids} of processes outside ``ours`` computing on ``gpus`` now, from nvidia-smi."""
    text = nvidia_smi("--query-compute-apps=gpu_uuid,pid", "--format=csv,noheader")
    return busy_gpus(text, gpus, ours)


def busy_gpus(text: str, gpus: list[Gpu], ours: set[int]) -> dict[int, list[int]]:
    by_uuid = {g.uuid: g.index for g in gpus}
    busy: dict[int, list[int]] = {}
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] in by_uuid and parts[1].isdigit() and int(parts[1]) not in ours:
            busy.setdefault(by_uuid[parts[0]], []).append(int(parts[1]))
    return busy


class GpuLocks:
    """One lock file per GPU of this host (in the system's temporary folder, shared by every tlq worker here),
    held while the worker lives: two workers never own one GPU."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder or tempfile.gettempdir())
        self.held: list[int] = []

    def take(self, gpus: list[Gpu], worker: str) -> None:
        for gpu in gpus:
            path = self.folder / f"tlq-gpu-{gpu.uuid}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Path(path).read_text(errors="replace").strip() or "another worker"
                os.close(fd)
                self.release()
                raise BadInput(f"GPU {gpu.index} belongs to {holder} on this host; give --gpus without it") from None
            os.ftruncate(fd, 0)
            os.write(fd, f"tlq worker {worker} (pid {os.getpid()})".encode())
            self.held.append(fd)

    def release(self) -> None:
        for fd in self.held:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.held = []


def claim(spec: str, worker: str, locks: GpuLocks | None = None) -> tuple[list[Gpu], GpuLocks]:
    """The GPUs a ``--gpus`` worker takes, checked free and locked; raises BadInput naming the problem and fix."""
    gpus = choose(spec, host_gpus())
    busy = foreign_users(gpus, {os.getpid()})
    if busy:
        index, pids = next(iter(busy.items()))
        raise BadInput(
            f"GPU {index} is in use by process {', '.join(map(str, pids))}, not a tlq worker's; stop it or give "
            "--gpus without that GPU"
        )
    locks = locks or GpuLocks()
    locks.take(gpus, worker)
    return gpus, locks


class JobGpus:
    """The GPUs of a `tlq worker --gpus` as its jobs share them. A job holds a lock file for each GPU it computes
    on (the kernel drops it if the pool process dies). A one-GPU job takes its pool process's own GPU and waits
    while a ``--ddp`` job borrows it; a ``--ddp`` job of N gathers N GPUs that are free together (its own first)
    or holds none and tries again, so two ``--ddp`` jobs never each hold half of what both need; while it
    gathers, no other job of the worker starts on a GPU (a turn lock), so a stream of one-GPU jobs cannot starve it."""

    def __init__(self, gpus: list[Gpu], own: int, folder: Path | None = None, every: float = 0.5) -> None:
        self.gpus = list(gpus)
        self.own = own
        self.folder = Path(folder or tempfile.gettempdir())
        self.every = every
        self.held: dict[int, int] = {}  # GPU index: the lock file's descriptor

    def gather(self, count: int, job_id: int, waiting: Callable[[str], None]) -> list[int]:
        """Holds ``count`` GPUs for job ``job_id`` (only the pool process's own, for one) and returns their
        indices; while they are not free together, calls ``waiting(why)`` (which raises to give up) and retries.

        Raises:
            BadInput: The worker owns fewer than ``count`` GPUs.
        """
        if count > len(self.gpus):
            raise BadInput(
                f"--ddp {count} needs {count} GPUs but this worker owns {len(self.gpus)}; resubmit with --ddp "
                f"{len(self.gpus)} or fewer"
            )
        ours = [g for g in self.gpus if g.index == self.own]
        order = ours if count == 1 else ours + [g for g in self.gpus if g.index != self.own]
        # A --ddp job gathers under the worker's turn lock, exclusively: one-GPU jobs take their GPU under it shared,
        # so while a --ddp job waits no new job takes a GPU it is waiting for, and it is not starved.
        self.release()  # what this job held (its own GPU, before a --ddp launch) is not kept while it waits its turn
        with self._turn(exclusive=count > 1, waiting=waiting):
            while True:
                busy = [gpu for gpu in order if len(self.held) < count and not self._take(gpu, job_id)]
                if len(self.held) == count:
                    return sorted(self.held)
                free = len(self.held)
                self.release()
                users = ", ".join(f"GPU {g.index}: {self._holder(g)}" for g in busy)
                if count == 1:
                    waiting(f"waiting for GPU {self.own}, lent to another job ({users})")
                else:
                    waiting(f"waiting for {count} GPUs of this worker free together ({free} free; {users})")
                self._pause()

    @contextlib.contextmanager
    def _turn(self, exclusive: bool, waiting: Callable[[str], None]):
        fd = os.open(self.folder / "tlq-gpu-turn.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waiting(
                        "waiting for its turn: a --ddp job of this worker is gathering GPUs, or a job waits for its own"
                    )
                    self._pause()
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def _pause(self) -> None:
        time.sleep(self.every * random.uniform(0.5, 1.5))  # two jobs retrying in step would collide again

    def release(self) -> None:
        for fd in self.held.values():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)  # for every copy: a loader process forked meanwhile holds one
                os.close(fd)
        self.held = {}

    def _path(self, gpu: Gpu) -> Path:
        return self.folder / f"tlq-gpu-{gpu.uuid}.job.lock"

    def _take(self, gpu: Gpu, job_id: int) -> bool:
        fd = os.open(self._path(gpu), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.held[gpu.index] = fd  # released with the rest even if the note below cannot be written
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.write(fd, f"job {job_id}".encode())
        return True

    def _holder(self, gpu: Gpu) -> str:
        try:
            return self._path(gpu).read_text(errors="replace").strip() or "a job"
        except OSError:
            return "a job"


def free_cached_memory() -> None:
    """Hands the memory torch's allocator keeps cached on this process's GPU back, so that a --ddp job of another
    pool process that borrows the GPU next gets it."""
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def pin(gpus: list[int], pool_index: int) -> str:
    """Sets this pool process's ``CUDA_VISIBLE_DEVICES`` to its GPU (by its pool index); returns the value."""
    value = str(gpus[pool_index % len(gpus)])
    os.environ["CUDA_VISIBLE_DEVICES"] = value
    return value


def as_json(gpus: list[Gpu]) -> str:
    return json.dumps([asdict(g) for g in gpus])
