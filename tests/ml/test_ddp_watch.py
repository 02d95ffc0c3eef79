"""The --ddp job process's two guards against a hang: the report server stops whatever rank 0 is doing (a job
whose ranks are done must end, not wait on its own socket), and a group that shows no sign of life for
``TLQ_STALL_AFTER`` is called hung, with a reason that names what is stuck and the setting to raise. Time is
injected; tests/integration/test_ddp.py freezes a real rank."""

import logging
import secrets
import threading
import time
from multiprocessing.connection import Client, Listener

import pytest

from tlq.ml.ddp_launch import GroupWatch, RankServer

BOUND = 900.0


class Recorded:
    """The job's context as the report server uses it: what rank 0 reported, in order."""

    job_id = 7
    log = logging.getLogger("tests.ddp_watch")

    def __init__(self) -> None:
        self.progressed: list[tuple] = []

    def progress(self, current, total, stage) -> None:
        self.progressed.append((current, total, stage))


@pytest.fixture()
def server(tmp_path):
    address = (str(tmp_path / "reports.sock"), secrets.token_bytes(32))
    ctx = Recorded()
    server = RankServer(ctx, Listener(address[0], family="AF_UNIX", authkey=address[1]), address)
    server.start()
    yield server, ctx, address
    server.closed.set()


def closes_within(server: RankServer, seconds: float) -> bool:
    closing = threading.Thread(target=server.close, daemon=True)
    closing.start()
    closing.join(seconds)
    return not closing.is_alive() and not server.is_alive()


@pytest.mark.parametrize("rank_0", ["still connected", "just exited"])
def test_the_job_process_stops_its_report_server_whatever_rank_0_is_doing(server, rank_0):
    server, ctx, address = server
    conn = Client(address[0], family="AF_UNIX", authkey=address[1])
    conn.send(("progress", (3, 5, "epoch 3/5")))
    assert conn.recv() is None and ctx.progressed == [(3, 5, "epoch 3/5")]
    if rank_0 == "just exited":
        conn.close()
    # Before the fix, close() opened a Client whose handshake waited for an accept the server, leaving
    # serve() on seeing `closed`, never made: the job's process hung after its ranks were done.
    assert closes_within(server, 5), f"close() hung with rank 0 {rank_0}"


def test_a_group_whose_rank_0_keeps_reporting_is_never_hung():
    watch = GroupWatch(BOUND, now=0.0, joined=0)
    for now in range(0, 5000, 300):  # a report every 5 minutes, for over an hour
        assert watch.hung(now, heard=now, joined=1, ranks=frozenset({11, 12})) is None


def test_a_silent_group_is_hung_after_the_bound_and_the_reason_names_what_and_the_fix():
    watch = GroupWatch(BOUND, now=0.0, joined=0)
    ranks = frozenset({11, 12})
    assert watch.hung(10.0, heard=10.0, joined=1, ranks=ranks) is None
    assert watch.hung(10.0 + BOUND, heard=10.0, joined=1, ranks=ranks) is None
    reason = watch.hung(11.0 + BOUND, heard=10.0, joined=1, ranks=ranks)
    assert reason is not None and "\n" not in reason
    assert "no sign of life from the ranks for 901 s" in reason and "no report from rank 0" in reason
    assert "raise TLQ_STALL_AFTER (now 900)" in reason


def test_ranks_that_never_connect_are_stuck_starting():
    watch = GroupWatch(BOUND, now=0.0, joined=3)  # earlier groups' rank 0 connected three times
    assert watch.hung(5.0, heard=0.0, joined=3, ranks=frozenset({21, 22})) is None
    reason = watch.hung(6.0 + BOUND, heard=0.0, joined=3, ranks=frozenset({21, 22}))
    assert reason is not None and "rank 0 never connected to the job" in reason


def test_a_rank_starting_or_ending_is_a_sign_of_life():
    watch = GroupWatch(BOUND, now=0.0, joined=0)
    assert watch.hung(600.0, heard=0.0, joined=0, ranks=frozenset({31})) is None  # rank 0 started
    assert watch.hung(1200.0, heard=0.0, joined=0, ranks=frozenset({31, 32})) is None  # then rank 1
    assert watch.hung(2000.0, heard=0.0, joined=0, ranks=frozenset({31})) is None  # rank 1 ended
    assert watch.hung(2000.0 + BOUND + 1, heard=0.0, joined=0, ranks=frozenset({31})) is not None


def test_the_report_server_marks_each_report_as_a_sign_of_life(server):
    server, _ctx, address = server
    before = server.heard
    time.sleep(0.01)
    with Client(address[0], family="AF_UNIX", authkey=address[1]) as conn:
        conn.send(("progress", (1, 2, "epoch 1/2")))
        conn.recv()
        assert server.joined == 1 and server.heard > before
