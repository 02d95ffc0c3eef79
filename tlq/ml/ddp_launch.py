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
- a group that shows no sign of life for ``TLQ_STALL_AFTER`` seconds (no report from rank 0, no rank started or
  ended) is killed and counts as a failed run of the group (``GroupWatch``): the job's own half-second check marks
  the job as moving, so the worker's stall check cannot see a stuck group;
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
import time
import uuid
from collections.abc import Callable
from multiprocessing import AuthenticationError
from multiprocessing.connection import Listener
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
    restarts, stall_s = 0, ctx.env.settings.stall_after_s
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
            watch = GroupWatch(stall_s, time.monotonic(), server.joined)
            thread.start()
            hung = supervise(ctx, thread, server, watch, lambda: live_ranks(rundir), before)
            error = outcome.get("error")
            if error is None and hung is None:
                if server.error is not None:
                    raise server.error
                return
            ctx.check()  # a cancel that rank 0 heard first ended the group: say that, not that a rank failed
            if server.stopping is not None:
                raise server.stopping
            if server.error is not None:  # rank 0 said why it failed (bad input): starting again would not help
                raise server.error
            why = hung or describe_failure(error)
            if (hung is None and not isinstance(error, ChildFailedError)) or restarts >= RESTARTS:
                raise RuntimeError(f"--ddp {processes}: {why}") from error
            restarts += 1
            ctx.log.warning(
                "job %s: %s; starting all %d again from the last checkpoint (%d of %d)",
                ctx.job_id,
                f"the group hung: {hung}" if hung else f"a rank failed ({why})",
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


def supervise(
    ctx: JobContext,
    thread: threading.Thread,
    server: RankServer,
    watch: GroupWatch,
    ranks: Callable[[], frozenset[int]],
    before: set[int],
) -> str | None:
    """Waits for the launcher ``thread`` to end, checking the job every ``CHECK_S``; returns None when it ended by
    itself, or why the group hung once ``watch`` says so (its ranks killed, the launcher ended). A cancel, a lost
    lease, a timeout or a report the job refused kills the ranks and raises."""
    try:
        while thread.is_alive():
            thread.join(CHECK_S)
            ctx.check()
            if server.error is not None:
                raise server.error
            hung = watch.hung(time.monotonic(), server.heard, server.joined, ranks())
            if hung is not None and thread.is_alive():
                break
        else:
            return None
    except BaseException:
        kill_ranks(before)
        thread.join(30)
        raise
    kill_ranks(before)
    thread.join(30)
    if thread.is_alive():  # torch's launcher is stuck itself: nothing to start again with
        raise RuntimeError(f"{hung}; torch's launcher did not stop once its ranks were killed")
    return hung


class GroupWatch:
    """Says when a group of ranks stopped moving. Signs of life: the group's start, anything rank 0 does on its
    socket (connect, report, hang up: ``RankServer.heard``), and any rank starting or ending. No sign for
    ``bound_s`` (``TLQ_STALL_AFTER``) means a rank is stuck where no timeout of its own ends it soon: a gloo
    collective whose peer is frozen waits 30 minutes, a rendezvous two hours.

    Args:
        bound_s: Seconds without a sign of life before the group counts as hung.
        now: When the group started (``time.monotonic()``).
        joined: ``RankServer.joined`` when it started, to tell whether this group's rank 0 ever connected.
    """

    def __init__(self, bound_s: float, now: float, joined: int) -> None:
        self.bound_s, self.since, self.joined, self.ranks = bound_s, now, joined, frozenset()

    def hung(self, now: float, heard: float, joined: int, ranks: frozenset[int]) -> str | None:
        """None while the group moves; else why it is stuck, in one line that names the setting to raise."""
        if ranks != self.ranks:
            self.ranks, self.since = ranks, now
        self.since = max(self.since, heard)
        quiet = now - self.since
        if quiet <= self.bound_s:
            return None
        if joined == self.joined:
            where = "rank 0 never connected to the job: the ranks are stuck starting (rendezvous or joining the group)"
        else:
            where = "no report from rank 0 and no rank started or ended: a rank is stuck in a step or a collective"
        fix = f"raise TLQ_STALL_AFTER (now {self.bound_s:g}) if one step may take longer"
        return f"no sign of life from the ranks for {quiet:.0f} s ({where}); {fix}"


def live_ranks(rundir: Path) -> frozenset[int]:
    """The pids of the ranks alive now, from the pid files each writes as it starts (a group started again
    writes over them)."""
    found = set()
    for pid_file in rundir.glob("rank-*.pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text())
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.add(pid)
    return frozenset(found)


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
    started again connects again; ``heard`` and ``joined`` tell ``GroupWatch`` that rank 0 is moving."""

    def __init__(self, ctx: JobContext, listener, address: tuple[str, bytes]) -> None:
        super().__init__(name=f"tlq-ddp-reports-{ctx.job_id}", daemon=True)
        self.ctx, self.listener, self.address = ctx, listener, address
        self.error: BaseException | None = None  # a report the job could not take (a bad metric)
        self.stopping: BaseException | None = None  # a cancel, lost lease or timeout rank 0 was told of
        self.closed = threading.Event()
        self.heard = time.monotonic()  # when rank 0 last connected, reported or hung up
        self.joined = 0  # connections taken: one per group whose rank 0 started

    def run(self) -> None:
        while not self.closed.is_set():
            try:
                conn = self.listener.accept()
            except (OSError, EOFError, AuthenticationError):  # closed, woken by close(), or a peer without the key
                continue
            self.joined, self.heard = self.joined + 1, time.monotonic()
            with conn:
                self.serve(conn)
            self.heard = time.monotonic()

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
            self.heard = time.monotonic()
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
            self.heard = time.monotonic()
            try:
                conn.send(answer)
            except OSError:  # rank 0 is gone
                return
            except Exception:  # an exception pickle cannot carry: rank 0 would wait for its answer forever
                with contextlib.suppress(OSError):
                    conn.send(RuntimeError(f"{type(answer).__name__}: {answer}"))

    def close(self) -> None:
        """Stops the thread: closing a listening socket does not wake a thread blocked in accept(), a connection
        does. A bare one, dropped at once, never a ``Client``: a Client's handshake waits for the accept, and a
        thread that left serve() on seeing ``closed`` never makes it, so the job's process would wait forever."""
        self.closed.set()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.setblocking(False)  # a full backlog holds a connection already, which wakes the accept as well
            wake.connect(self.address[0])
        with contextlib.suppress(OSError):
            self.listener.close()
        self.join(2)
