"""How a worker's pool processes share the cores: each gets its share of compute threads, unless the user set a
thread count OpenMP takes."""

import os
import sys
import types

import pytest

from tlq.workers.app import share_cores
from tlq.workers.lifecycle import threads_per_process


@pytest.fixture
def torch_threads(monkeypatch):
    """A stand-in torch, as a pool process has it (imported before the fork); what it was set to."""
    set_to = []
    monkeypatch.setitem(sys.modules, "torch", types.SimpleNamespace(set_num_threads=set_to.append))
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    return set_to


@pytest.mark.parametrize("given", [None, "", " ", "abc", "0", "-1", "²", "1.5"])
def test_without_a_thread_count_openmp_takes_each_process_gets_its_share(given, monkeypatch, torch_threads):
    if given is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", given)  # restored after the test, whatever share_cores writes
    share_cores(3)
    assert torch_threads == [3]
    # and what this process starts (DataLoader workers, a subprocess) gets a count it can use
    assert (os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"]) == ("3", "3")


@pytest.mark.parametrize(("given", "threads"), [("5", 5), (" 5 ", 5), ("4,2", 4), ("1", 1)])
def test_a_thread_count_the_user_set_is_kept(given, threads, monkeypatch, torch_threads):
    monkeypatch.setenv("OMP_NUM_THREADS", given)
    share_cores(3)
    assert torch_threads == [threads]
    assert os.environ["OMP_NUM_THREADS"] == given


def test_the_share_is_of_the_cores_this_worker_may_run_on(monkeypatch):
    """A worker pinned to 4 of 64 cores (taskset, a container's cpuset) shares those 4: 64 / 2 = 32 threads in each
    of two processes would put 16 threads on every core it has, worse than torch's own default."""
    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert threads_per_process(2, "prefork") == 2
    assert threads_per_process(8, "prefork") == 1  # more processes than cores: one thread each
    assert threads_per_process(1, "prefork") is None  # one process: torch's own count
    assert threads_per_process(4, "solo") is None and threads_per_process(4, "threads") is None
