"""Routing by need: a job that takes N GPUs (finetune --ddp N) goes to the gpus-N queue, which only workers that own
N GPUs consume, and waits with its reason in `tlq show` / `tlq jobs` until one is live. The workers here are rows
in the database, as a GPU host elsewhere would write them (this machine has no GPU); submit and show are the real
command line."""

from __future__ import annotations

from tests.support import make_digits, run_tlq, tlq_env, tlq_json
from tlq.config import Settings
from tlq.db import Database, queries
from tlq.jobs.submit import waiting_reason
from tlq.workers.app import gpu_queue, gpu_queues, gpus_wanted


def test_gpu_queues_by_count():
    assert [gpu_queue(n) for n in (1, 2, 8)] == ["gpu", "gpus-2", "gpus-8"]
    assert gpu_queues(4) == ["gpu", "gpus-2", "gpus-3", "gpus-4"] and gpu_queues(1) == ["gpu"]
    assert [gpus_wanted(q) for q in ("gpu", "gpus-4", "cpu", "gpus-x", "local")] == [1, 4, None, None, None]
    assert waiting_reason("gpus-2", "queued", {"cpu", "gpu", "gpus-2"}) is None
    assert waiting_reason("gpus-4", "running", set()) is None


def _live_gpu_worker(home, name: str, owned: int) -> None:
    db = Database(Settings.load(environ={"TLQ_HOME": str(home)}).database_url)
    with db.session() as session:
        queues = ",".join(["cpu", *gpu_queues(owned)])
        queries.register_worker(session, name, "instance", hostname="gpu-host", pid=1, queues=queues, device="cuda")
    db.engine.dispose()


def test_a_job_of_more_gpus_than_any_worker_owns_waits_and_says_why(tmp_path, home):
    data = make_digits(tmp_path / "digits", classes=range(2), per_class=6, size=16)
    env = tlq_env(home)
    args = ["submit", "finetune", "--backbone", "test_resnet", "--data", data, "--device", "cuda", "--strategy", "full"]
    args += ["--no-pretrained"]
    job = tlq_json([*args, "--ddp", "2"], env)
    one = tlq_json(args, env)
    assert job["queue"] == "gpus-2" and one["queue"] == "gpu"
    auto = tlq_json([*[a if a != "cuda" else "auto" for a in args], "--ddp", "2"], env)
    assert auto["queue"] == "cpu" and auto["device"] == "cpu"  # no worker owns 2 GPUs: it runs on CPUs, said so

    shown = tlq_json(["show", job["id"]], env)
    assert shown["status"] == "queued"
    assert shown["waiting"].startswith("waiting for a worker with 2 GPUs: no GPU worker is live")

    _live_gpu_worker(home, "one-gpu", owned=1)  # takes the one-GPU job's queue, not the --ddp 2 one
    assert tlq_json(["show", one["id"]], env)["waiting"] is None
    shown = tlq_json(["show", job["id"]], env)
    assert "the largest live GPU worker owns 1" in shown["waiting"] and "--gpus all" in shown["waiting"]
    line = next(row for row in run_tlq(["jobs"], env).stdout.splitlines() if row.split()[:1] == [str(job["id"])])
    assert "waiting for a worker with 2 GPUs" in line

    _live_gpu_worker(home, "two-gpus", owned=2)
    assert tlq_json(["show", job["id"]], env)["waiting"] is None
