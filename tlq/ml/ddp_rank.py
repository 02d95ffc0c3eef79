"""A rank of a ``--ddp N`` job (``tlq.ml.ddp_launch`` starts them): its context, whose reports rank 0 hands to the
job's process and other ranks drop, and its main function."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from multiprocessing.connection import Client
from pathlib import Path

from tlq.errors import BadInput
from tlq.plugins.artifacts import ArtifactStore
from tlq.plugins.context import JobContext


class _NoLease:
    """A rank holds no lease: the job's process does."""

    def __init__(self) -> None:
        self.lost, self.cancelled = threading.Event(), threading.Event()
        self.lost_reason, self.error = None, None

    def write(self, write) -> None:
        pass

    def flush(self) -> bool:
        return True

    def set_progress(self, current, total, stage) -> None:
        pass

    def moved(self) -> None:
        pass

    def verify(self) -> None:
        pass


class ScratchArtifacts(ArtifactStore):
    """Ranks other than 0 read the job's files (a checkpoint to resume from) but write none: what they would
    write goes to a scratch file and is dropped."""

    def __init__(self, root: Path, job_id: int, scratch: Path) -> None:
        super().__init__(root, job_id, record=lambda *a: None)
        self.scratch = scratch

    @contextlib.contextmanager
    def target(self, kind: str, name: str):
        tmp = self.scratch / f"scratch-{os.getpid()}"
        try:
            yield tmp
        finally:
            tmp.unlink(missing_ok=True)

    def remove(self, name: str) -> None:
        pass


class RankContext(JobContext):
    """The job as a rank sees it: rank 0's reports go to the job's process (``RankServer``) and wait for its
    answer; other ranks report nothing."""

    def __init__(self, job: dict, rank: int) -> None:
        from tlq.env import Environment

        super().__init__(
            job["job_id"],
            job["backbone"],
            Environment(job["settings"]),
            worker="ddp",
            lease=_NoLease(),
            device=job["device"],
            attempt=job["attempt"],
            origin=job["origin"],
        )
        self.rank = rank
        self.conn = Client(job["reports"][0], family="AF_UNIX", authkey=job["reports"][1]) if rank == 0 else None
        if rank != 0:
            self.artifacts = ScratchArtifacts(self.env.settings.artifacts_dir, self.job_id, Path(job["rundir"]))

    def _call(self, method: str, *args) -> None:
        if self.rank != 0:
            return
        self.conn.send((method, args))
        answer = self.conn.recv()
        if isinstance(answer, BaseException):
            raise answer

    def metrics(self, values: dict[str, float], step: int = 0, epoch: int | None = None) -> None:
        self._call("metrics", {k: float(v) for k, v in values.items()}, step, epoch)

    def forget_metrics_after(self, step: int) -> None:
        self._call("forget_metrics_after", step)

    def progress(self, current: float | None, total: float | None = None, stage: str | None = None) -> None:
        self._call("progress", current, total, stage)

    def check(self) -> None:
        self._call("check")

    def _before_landing(self) -> None:
        self._call("_before_landing")

    def _record_artifact(self, kind: str, path: str, size: int, sha256: str) -> None:
        self._call("_record_artifact", kind, path, size, sha256)

    def _forget_artifact(self, path: str) -> None:
        self._call("_forget_artifact", path)


class _ToJobLog(logging.Handler):
    def __init__(self, ctx: RankContext) -> None:
        super().__init__(logging.INFO)
        self.ctx = ctx

    def emit(self, record: logging.LogRecord) -> None:
        with contextlib.suppress(Exception):
            self.ctx._call("log", record.levelno, "rank 0: %s", record.getMessage())


def _watch_parent(parent: int) -> None:
    """Exits this rank once the job's process is gone (a killed worker leaves no rank running)."""
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(0.5)


def rank_main(job: dict) -> None:
    """A rank: joins the group (gloo on CPU, nccl on GPUs), then runs the task's ``run`` on its ``RankContext``."""
    import torch
    import torch.distributed as dist

    threading.Thread(target=_watch_parent, args=(job["parent"],), daemon=True).start()
    rank = int(os.environ["RANK"])
    Path(job["rundir"], f"rank-{rank}.pid").write_text(str(os.getpid()))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["WORLD_SIZE"])))
    device = job["device"]
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # the ranks talk over loopback: nothing listens outside
    os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
    if device == "cuda":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if device == "cuda" else "gloo")
    try:
        ctx = RankContext(job, rank)
        if rank == 0:
            ctx.log.setLevel(logging.INFO)
            ctx.log.addHandler(_ToJobLog(ctx))
        params = job["params_type"].model_validate(job["params"])
        try:
            job["run"](ctx, params)
        except BadInput as exc:  # the job's data or options: the job's process says so and starts nothing again
            if rank == 0:
                with contextlib.suppress(Exception):
                    ctx._call("failed", exc)
            raise
    finally:
        dist.destroy_process_group()
