"""`tlq worker --gpus`: which GPUs a worker takes, that two workers never own one, and what a host without GPUs
says. nvidia-smi's output is parsed as these machines have no GPU (pure logic, on its documented CSV form); the
locks are real file locks, and the command is the real one."""

import os
import subprocess
import sys

import pytest

from tlq.errors import BadInput
from tlq.workers.gpus import Gpu, GpuLocks, busy_gpus, choose, parse_gpu_table, pin

# `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits` on a host of 4 GPUs.
TABLE = """0, GPU-aaaa, NVIDIA H200, 143771
1, GPU-bbbb, NVIDIA H200, 143771
2, GPU-cccc, NVIDIA H200, 143771
3, GPU-dddd, NVIDIA H200, 143771
"""


@pytest.fixture()
def host():
    return parse_gpu_table(TABLE)


def test_the_gpu_table_is_read_with_memory_in_bytes(host):
    assert [g.index for g in host] == [0, 1, 2, 3]
    assert host[2] == Gpu(2, "GPU-cccc", "NVIDIA H200", 143771 * 2**20)
    assert host[0].describe() == "0: NVIDIA H200, 140 GiB"
    assert parse_gpu_table("") == [] and parse_gpu_table("No devices were found\n") == []


def test_all_a_count_or_a_list_of_indices(host):
    assert choose("all", host) == host
    assert [g.index for g in choose("2", host)] == [0, 1]
    assert [g.index for g in choose("0,2, 3", host)] == [0, 2, 3]


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("5", r"this host has 4 \(0, 1, 2, 3\)"),
        ("0", "give a count from 1 to 4"),
        ("1,7", "there is no GPU 7"),
        ("1,1", "GPU 1 is named twice"),
        ("two", "give all, a count, or GPU indices"),
        ("", "give all, a count, or GPU indices"),
    ],
)
def test_a_bad_gpu_list_names_the_problem(host, spec, says):
    with pytest.raises(BadInput, match=says):
        choose(spec, host)


def test_a_host_without_gpus_is_refused():
    with pytest.raises(BadInput, match="no CUDA GPU .* drop --gpus"):
        choose("all", [])


def test_a_gpu_another_program_computes_on_is_found(host):
    apps = "GPU-bbbb, 4242\nGPU-bbbb, 77\nGPU-dddd, 4243\n"
    assert busy_gpus(apps, host[:2], ours={77}) == {1: [4242]}  # GPU 3 is not asked for; pid 77 is ours


def test_two_workers_never_own_one_gpu(tmp_path, host):
    first = GpuLocks(tmp_path)
    first.take(host[:2], "w1")
    second = GpuLocks(tmp_path)
    with pytest.raises(BadInput, match=r"GPU 1 belongs to tlq worker w1 \(pid \d+\) on this host"):
        second.take([host[3], host[1]], "w2")
    assert second.held == []  # what it had taken (GPU 3) is let go
    second.take([host[3]], "w2")
    first.release()
    GpuLocks(tmp_path).take(host[:2], "w3")  # free again once the first worker is gone


def test_each_pool_process_sees_its_own_gpu(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [pin([0, 2, 5], i) for i in range(3)] == ["0", "2", "5"]
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    assert pin([0, 2, 5], 4) == "2"  # a replaced process with a higher index stays on one of the worker's GPUs


def test_tlq_worker_gpus_on_a_cpu_host_says_so_in_one_line(tmp_path):
    env = {**os.environ, "TLQ_HOME": str(tmp_path), "PATH": os.environ["PATH"]}
    done = subprocess.run(
        [sys.executable, "-m", "tlq", "worker", "--gpus", "all"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().count("\n") == 0
    assert "no CUDA GPU" in done.stderr and "drop --gpus" in done.stderr
