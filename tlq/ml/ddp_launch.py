"""``--ddp N``: one job as N processes under torch.distributed, started by torch's elastic launcher.

The job's own process (the one that holds the lease) starts the ranks with ``elastic_launch`` (in a thread of its
own, so the launcher leaves the worker's signal handlers alone) and stays their only link to the database:

- rank 0 records metrics, progress, checkpoints and artifacts through a ``RankContext`` whose every report is a
  call over a Unix socket to this process, answered after the job's real ``JobContext`` took it (a cancel, a lost lease
  or a timeout comes back as the exception it is, and rank 0 stops); the other ranks record nothing;
- this process checks the job every half second while the ranks run, and on a cancel, a lost lease or a timeout
  kills every rank before it raises;
- a rank that dies (killed, out of memory) ends the group: the launcher stops the others, and the group starts
  again from the last checkpoint, up to ``RESTARTS`` times (metric ``ddp_restarts``);
- a rank whose parent died (the worker was killed) exits within a second: no rank outlives its job's process.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import uuid
from collections.abc import Callable
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

from tlq.ml.ddp_rank import rank_main
from tlq.plugins.context import JobContext

RESTARTS = 2  # group restarts after a rank died, within one attempt
CHECK_S = 0.5


# --- the job's process ----------------------------------------------------------------------------------------


def loopback_rendezvous(params):
    """torch's static TCP rendezvous for one host, its store listening on 127.0.0.1 alone: torch's own stores
    listen on every interface, without authentication."""
    import datetime as dt

    from torch.distributed import PrefixStore, TCPStore
    from torch.distributed.elastic.rendezvous import RendezvousInfo
    from torch.distributed.elastic.rendezvous.api import RendezvousStoreInfo
    from torch.distributed.elastic.rendezvous.static_tcp_rendezvous import StaticTCPRendezvous

    class Loopback(StaticTCPRendezvous):
        def get_backend(self) -> str:
            return RENDEZVOUS

        def next_rendezvous(self) -> RendezvousInfo:
            if self._store is None:
                listening = socket.socket()
                listening.bind(("127.0.0.1", 0))
                listening.listen(128)
                self.master_port = listening.getsockname()[1]
                # The store owns the socket from here on: Python must not close it under the store's daemon.
                self._store = TCPStore("127.0.0.1", self.master_port, 1, True, self.timeout, multi_tenant=True,
                                       master_listen_fd=listening.detach(), use_libuv=False)  # fmt: skip
            info = RendezvousStoreInfo("127.0.0.1", self.master_port)
            return RendezvousInfo(PrefixStore(self.run_id, self._store), 0, 1, info)

    return Loopback("127.0.0.1", 0, 0, 1, params.run_id, int(dt.timedelta(hours=2).total_seconds()))


RENDEZVOUS = "tlq-loopback"
_registered = threading.Lock()


def register_rendezvous() -> None:
    from torch.distributed.elastic.rendezvous.api import rendezvous_handler_registry

    with _registered, contextlib.suppress(ValueError):  # registered already
        rendezvous_handler_registry.register(RENDEZVOUS, loopback_rendezvous)


def launch(ctx: JobContext, params, run: Callable, processes: int) -> None:
    """Runs ``run(rank_ctx, params)`` in ``processes`` ranks (``run`` is the task's own run function, pickled by
    name) and returns when they all succeeded; raises what stopped them."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    visible = None
    if ctx.device == "cuda" and ctx.gpus is not None:  # a `tlq worker --gpus` pool process: gather N of its GPUs
        chosen = ctx.gpus.gather(processes, ctx.job_id, lambda why: ctx.progress(None, None, why))
        visible = ",".join(str(index) for index in chosen)
        ctx.log.info("--ddp %s runs on GPUs %s", processes, visible)
    elif ctx.device == "cuda":
        import torch

        seen = torch.cuda.device_count()
        if seen < processes:
            from tlq.errors import BadInput

            raise BadInput(
                f"--ddp {processes} needs {processes} GPUs but this worker's process sees {seen}; run it on a "
                f"worker that owns {processes} (`tlq worker --gpus all` on a host with as many)"
            )
    register_rendezvous()
    plain_authkey()
    # torch warns on every launch from a thread that it could not install signal handlers: tlq kills the ranks.
    logging.getLogger("torch.distributed.elastic.multiprocessing.api").setLevel(logging.ERROR)
    before = children()  # a stdlib resource tracker, say: not ranks
    rundir = Path(tempfile.mkdtemp(prefix=f"tlq-ddp-{ctx.job_id}-"))  # mode 0700: this user's alone
    reports = (str(rundir / "reports.sock"), secrets.token_bytes(32))  # the socket and its key
    server = RankServer(ctx, Listener(reports[0], family="AF_UNIX", authkey=reports[1]), reports)
    server.start()
    job = {
        "settings": ctx.env.settings,
        "job_id": ctx.job_id,
        "backbone": ctx.backbone,
        "device": ctx.device,
        "attempt": ctx.attempt,
        "origin": ctx.origin,
        "params": params.model_dump(mode="json"),
        "params_type": type(params),
        "run": run,
        "parent": os.getpid(),
        "rundir": str(rundir),
        "reports": reports,
    }
    restarts = 0
    shown = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:  # what the ranks see (they start after this); this process's CUDA is set already
        os.environ["CUDA_VISIBLE_DEVICES"] = visible
    try:
        while True:
            config = LaunchConfig(
                min_nodes=1,
                max_nodes=1,
                nproc_per_node=processes,
                run_id=f"tlq-{ctx.job_id}-{uuid.uuid4().hex[:8]}",
                rdzv_backend=RENDEZVOUS,
                rdzv_endpoint="127.0.0.1",
                local_addr="127.0.0.1",
                max_restarts=0,  # tlq restarts the group itself: a cancel must not be restarted
                monitor_interval=0.2,
                start_method="spawn",
                logs_specs=DefaultLogsSpecs(log_dir=str(rundir / "logs")),
            )
            outcome: dict[str, Any] = {}

            def start(config=config, outcome=outcome):
                try:
                    elastic_launch(config, rank_main)(job)
                except BaseException as exc:  # noqa: BLE001 - handed to the job's thread
                    outcome["error"] = exc

            thread = threading.Thread(target=start, name=f"tlq-ddp-{ctx.job_id}", daemon=True)
            thread.start()
            try:
                while thread.is_alive():
                    thread.join(CHECK_S)
                    ctx.check()
                    if server.error is not None:
                        raise server.error
            except BaseException:
                kill_ranks(before)
                thread.join(30)
                raise
            error = outcome.get("error")
            if error is None:
                if server.error is not None:
                    raise server.error
                return
            ctx.check()  # a cancel that rank 0 heard first ended the group: say that, not that a rank failed
            if server.stopping is not None:
                raise server.stopping
            if server.error is not None:  # rank 0 said why it failed (bad input): starting again would not help
                raise server.error
            if not isinstance(error, ChildFailedError) or restarts >= RESTARTS:
                raise RuntimeError(f"--ddp {processes}: {describe_failure(error)}") from error
            restarts += 1
            ctx.log.warning(
                "job %s: a rank failed (%s); starting all %d again from the last checkpoint (%d of %d)",
                ctx.job_id,
                describe_failure(error),
                processes,
                restarts,
                RESTARTS,
            )
            ctx.metric("ddp_restarts", restarts)
    finally:
        if visible is not None:
            _restore("CUDA_VISIBLE_DEVICES", shown)
        server.close()
        kill_ranks(before)
        shutil.rmtree(rundir, ignore_errors=True)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


def plain_authkey() -> None:
    """A Celery pool process is billiard's, and so is its process key: the standard library's spawn refuses to
    pickle it ("Pickling an AuthenticationString object is disallowed"). The key, as the standard library's."""
    import multiprocessing.process as stdlib

    current = stdlib.current_process()
    if type(current.authkey) is not stdlib.AuthenticationString:
        current._config["authkey"] = stdlib.AuthenticationString(bytes(current.authkey))


def describe_failure(error: BaseException) -> str:
    failures = getattr(error, "failures", None)
    if failures:
        parts = []
        for rank, failure in sorted(failures.items()):
            code = failure.exitcode
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
            message = failure.message.get("message", "") if isinstance(failure.message, dict) else failure.message
            message = message if isinstance(message, str) else ""
            parts.append(f"rank {rank} {how}" + (f": {message.splitlines()[0][:200]}" if message else ""))
        return "; ".join(parts)
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def children() -> set[int]:
    """The pids of this process's children, from /proc."""
    me, found = os.getpid(), set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == me:
                found.add(int(stat.parent.name))
    return found


def kill_ranks(before: set[int]) -> None:
    """SIGKILL to every child of this process born since ``before`` was taken: the ranks, at any stage of their
    start (they write no pid file until torch is imported and the group is joined)."""
    for pid in children() - before:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


class RankServer(threading.Thread):
    """Takes rank 0's reports over a Unix socket (in the job's private run folder, with a random key) and hands
    each to the job's real context, in order, answering each with None or the exception it raised. A group
    started again connects again."""

    def __init__(self, ctx: JobContext, listener, address: tuple[str, bytes]) -> None:
        super().__init__(name=f"tlq-ddp-reports-{ctx.job_id}", daemon=True)
        self.ctx, self.listener, self.address = ctx, listener, address
        self.error: BaseException | None = None  # a report the job could not take (a bad metric)
        self.stopping: BaseException | None = None  # a cancel, lost lease or timeout rank 0 was told of
        self.closed = threading.Event()

    def run(self) -> None:
        while not self.closed.is_set():
            try:
                conn = self.listener.accept()
            except (OSError, EOFError):  # closed, or a peer without the key
                continue
            with conn:
                self.serve(conn)

    def serve(self, conn) -> None:
        from tlq.errors import JobCancelled, JobTimedOut
        from tlq.plugins.context import JobLost

        while not self.closed.is_set():
            try:
                if not conn.poll(0.2):
                    continue
                method, args = conn.recv()
            except (EOFError, OSError):
                return
            try:
                if method == "log":
                    self.ctx.log.log(*args)
                    answer = None
                elif method == "failed":  # rank 0's own error, before it exits
                    self.error, answer = args[0], None
                else:
                    getattr(self.ctx, method)(*args)
                    answer = None
            except (JobCancelled, JobTimedOut, JobLost) as exc:
                self.stopping, answer = exc, exc
            except Exception as exc:  # noqa: BLE001 - rank 0 raises it where it reported
                self.error, answer = exc, exc
            with contextlib.suppress(OSError):
                conn.send(answer)

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError, EOFError), Client(self.address[0], "AF_UNIX", authkey=self.address[1]):
            pass  # closing a listening socket does not wake a thread blocked in accept(); a connection does
        with contextlib.suppress(OSError):
            self.listener.close()
        self.join(2)
