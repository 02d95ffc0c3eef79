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


# --- a --gpus worker's jobs sharing its GPUs (real lock files; each JobGpus is one pool process's view) -----------


class Stop(Exception):
    pass


def test_a_ddp_job_gathers_gpus_free_together_and_a_one_gpu_job_waits_for_its_own(host, tmp_path):
    from tlq.workers.gpus import JobGpus

    two = host[:2]
    first = JobGpus(two, own=0, folder=tmp_path, every=0.01)  # pool process 0
    second = JobGpus(two, own=1, folder=tmp_path, every=0.01)  # pool process 1
    assert first.gather(1, 11, waiting=lambda why: pytest.fail(why)) == [0]

    said = []

    def job_11_ends_after_two_waits(why):
        said.append(why)
        if len(said) == 2:
            first.release()

    assert second.gather(2, 12, job_11_ends_after_two_waits) == [0, 1]  # its own first, then the one lent back
    assert said[0] == "waiting for 2 GPUs of this worker free together (1 free; GPU 0: job 11)"

    def cancelled(why):
        raise Stop(why)

    with pytest.raises(Stop, match=r"waiting for GPU 0, lent to another job \(GPU 0: job 12\)"):
        first.gather(1, 13, cancelled)
    assert first.held == {}  # a job that gave up holds nothing
    second.release()
    assert first.gather(1, 13, cancelled) == [0]


def test_two_ddp_jobs_never_hold_half_each(host, tmp_path):
    """Three GPUs, one busy, two --ddp 2 jobs: neither keeps a GPU while it waits, so both run, one after the other
    (a job that held its own GPU while waiting for a second would deadlock the pair)."""
    import threading
    import time

    from tlq.workers.gpus import JobGpus

    three = host[:3]
    busy = JobGpus(three, own=2, folder=tmp_path)
    busy.gather(1, 1, waiting=lambda why: None)
    ran, errors = [], []

    def ddp(own, job):
        try:
            pool = JobGpus(three, own=own, folder=tmp_path, every=0.005)
            got = pool.gather(2, job, waiting=lambda why: None)
            start = time.monotonic()
            time.sleep(0.3)
            ran.append((job, got, start, time.monotonic()))
            pool.release()
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=ddp, args=(own, job), daemon=True) for own, job in ((0, 10), (1, 20))]
    for t in threads:
        t.start()
    time.sleep(0.5)
    assert len(ran) == 1 and set(ran[0][1]) == {0, 1}  # one ran on the two free GPUs; the other waited
    busy.release()
    for t in threads:
        t.join(10)
    assert not errors and len(ran) == 2 and not any(t.is_alive() for t in threads)
    (_, _, _, first_end), (_, _, second_start, _) = ran
    assert second_start >= first_end  # never on one GPU at once


def test_while_a_ddp_job_gathers_no_new_job_takes_a_gpu_it_waits_for(host, tmp_path):
    """Two GPUs, a one-GPU job running on GPU 1: a --ddp 2 job waits for it; a new one-GPU job on GPU 1's pool
    process (the next in its queue) must not slip in between and starve the --ddp job."""
    import threading
    import time

    from tlq.workers.gpus import JobGpus

    two = host[:2]
    running = JobGpus(two, own=1, folder=tmp_path, every=0.01)
    running.gather(1, 1, waiting=lambda why: None)
    gathered = []
    ddp = threading.Thread(
        target=lambda: gathered.append(JobGpus(two, own=0, folder=tmp_path, every=0.01).gather(2, 2, lambda w: None)),
        daemon=True,  # if the next job took GPU 1 the --ddp job would wait on: the test fails, not hangs
    )
    ddp.start()
    time.sleep(0.2)  # the --ddp job is gathering: GPU 0 free, GPU 1 busy
    running.release()  # job 1 ends; job 3 comes next on GPU 1's pool process
    said = []

    def next_job_waits(why):
        said.append(why)
        if gathered:  # the --ddp job has both GPUs: give up rather than wait for it to end
            raise Stop(why)

    with pytest.raises(Stop):
        JobGpus(two, own=1, folder=tmp_path, every=0.01).gather(1, 3, next_job_waits)
    ddp.join(5)
    assert gathered == [[0, 1]]
    assert any(w.startswith("waiting for its turn") or "job 2" in w for w in said)  # either, by the timing


def test_a_released_gpu_is_free_though_a_process_forked_meanwhile_still_lives(host, tmp_path):
    """A job's image loaders are forked while it holds its GPU and may outlive it: their copy of the lock's file
    must not keep the GPU from the next job."""
    import signal

    from tlq.workers.gpus import JobGpus

    pool = JobGpus(host[:1], own=0, folder=tmp_path)
    pool.gather(1, 1, waiting=lambda why: pytest.fail(why))
    child = os.fork()
    if child == 0:  # a loader that lives on
        signal.pause()
        os._exit(0)
    try:
        pool.release()
        assert JobGpus(host[:1], own=0, folder=tmp_path).gather(1, 2, waiting=lambda why: pytest.fail(why)) == [0]
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_two_ddp_jobs_that_each_hold_their_own_gpu_first_both_run(host, tmp_path):
    """As in a worker: each --ddp job first holds its own GPU (every GPU job does), then gathers two. Neither may
    keep its own while it waits for its turn, or each waits for the other's GPU for ever."""
    import threading
    import time

    from tlq.workers.gpus import JobGpus

    two, ran, barrier = host[:2], [], threading.Barrier(2)
    deadline = time.monotonic() + 10

    def give_up_late(why):
        if time.monotonic() > deadline:
            raise Stop(why)

    def ddp(own, job):
        pool = JobGpus(two, own=own, folder=tmp_path, every=0.01)
        pool.gather(1, job, give_up_late)
        barrier.wait(5)  # both hold their own GPU now
        ran.append((job, pool.gather(2, job, give_up_late)))
        time.sleep(0.05)
        pool.release()

    threads = [threading.Thread(target=ddp, args=(own, job), daemon=True) for own, job in ((0, 10), (1, 20))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(12)
    assert sorted(ran) == [(10, [0, 1]), (20, [0, 1])]


def test_a_ddp_job_larger_than_the_worker_is_refused_with_the_fix(host, tmp_path):
    from tlq.workers.gpus import JobGpus

    with pytest.raises(BadInput, match="--ddp 3 needs 3 GPUs but this worker owns 2; resubmit with --ddp 2"):
        JobGpus(host[:2], own=0, folder=tmp_path).gather(3, 1, waiting=lambda why: None)


def test_the_gpus_a_plain_worker_sees(host):
    from tlq.workers.gpus import visible_gpus

    assert visible_gpus(host, None) == host or os.environ.get("CUDA_VISIBLE_DEVICES") is not None
    assert [g.index for g in visible_gpus(host, "2,GPU-aaaa")] == [2, 0]
    assert [g.index for g in visible_gpus(host, "1,7,3")] == [1]  # CUDA stops at the first unknown entry
    assert visible_gpus(host, "") == []
