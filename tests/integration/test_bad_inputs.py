"""Crafted rows, crafted messages and hostile files fed to a live worker: each ends as a failed job with its
reason (or is refused), the worker stays alive, and nothing else is lost. The command-line half of the
battery is in tests/cli/test_errors.py, tests/tasks/test_finetune.py and tests/tasks/test_attacks.py."""

from __future__ import annotations

import csv
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from tests.support import WorkerProcess, run_tlq, tlq_env, tlq_json, wait_for_status
from tlq.config import Settings
from tlq.db import Database, claims, queries

pytestmark = pytest.mark.integration
FINAL = ("succeeded", "failed", "cancelled")


def crafted_row(home, **fields) -> int:
    """Writes a job row directly, as a buggy client or a hand edit might, and returns its id."""
    db = Database(Settings.load(home=home, environ={}).database_url)
    with db.session() as session:
        job_id = queries.create_job(session, **fields).id
    db.engine.dispose()
    return job_id


def send(home, *args, task: str = "tlq.run_job") -> None:
    """Publishes a hand-made JSON task message to the embedded broker's cpu queue."""
    from kombu import Connection, Exchange, Queue

    with Connection(f"sqla+sqlite:///{home / 'broker.sqlite'}") as conn:
        conn.Producer(serializer="json").publish(
            [list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}],
            routing_key="cpu",
            exchange="cpu",
            headers={"task": task, "id": f"crafted-{time.monotonic_ns()}", "lang": "py", "argsrepr": repr(args)},
            declare=[Queue("cpu", Exchange("cpu"), routing_key="cpu")],
        )


def hostile_images(root):
    """A class folder of every kind of file that breaks naive image loaders."""
    folder = root / "hostile"
    folder.mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 30, 30)).save(folder / "ok.png")
    (folder / "zero.jpg").write_bytes(b"")
    good = (folder / "ok.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    (folder / "text.jpg").write_text("I am not a JPEG")
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (folder / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    Image.fromarray(np.full((30, 40), 40000, dtype=np.uint16)).save(folder / "sixteen_bit.png")
    Image.new("CMYK", (40, 30), (0, 200, 200, 0)).save(folder / "cmyk.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    Image.new("RGB", (40, 30)).save(os.fsdecode(os.fsencode(folder) + b"/caf\xe9.png"))
    return root


def test_crafted_rows_and_messages_fail_cleanly_and_the_worker_lives(tmp_path, home, digits_dir):
    env = tlq_env(home)
    gone = tmp_path / "weights.safetensors"
    import timm
    from safetensors.torch import save_file

    save_file(timm.create_model("test_resnet").state_dict(), str(gone))
    failed_job = crafted_row(home, task="feature-extract", backbone="test_resnet", params={"data": "/nowhere"})
    db = Database(Settings.load(home=home, environ={}).database_url)
    with db.session() as session:
        lease = claims.claim(session, failed_job, "someone")
        claims.finish(session, failed_job, lease, queries.JobStatus.FAILED, "made to fail")
    rows = {
        "unknown task": (dict(task="nosuch", params={}), "unknown task 'nosuch'"),
        "negative batch size": (
            dict(
                task="feature-extract",
                backbone="test_resnet",
                pretrained=False,
                params={"data": str(digits_dir), "batch_size": -5},
            ),
            "--batch-size: Input should be greater than or equal to 1",
        ),
        "data folder gone": (
            dict(
                task="feature-extract",
                backbone="test_resnet",
                pretrained=False,
                params={"data": str(tmp_path / "gone")},
            ),
            "does not exist",
        ),
        "params not an object": (dict(task="feature-extract", backbone="test_resnet", params=[]), "valid dictionary"),
        "weights deleted after submit": (
            dict(task="feature-extract", backbone="test_resnet", weights=str(gone), params={"data": str(digits_dir)}),
            "weights file",
        ),
        "job:ID of a failed job": (
            dict(task="feature-extract", backbone=f"job:{failed_job}", params={"data": str(digits_dir)}),
            f"job {failed_job} is failed, so it left no model",
        ),
        "NaN in params": (
            dict(
                task="feature-extract",
                backbone="test_resnet",
                pretrained=False,
                params={"data": str(digits_dir), "batch_size": float("nan")},
            ),
            "--batch-size",
        ),
    }
    ids = {name: crafted_row(home, **fields) for name, (fields, _) in rows.items()}
    gone.unlink()
    with WorkerProcess(env, tmp_path / "worker.log") as worker:
        for job_id in ids.values():
            send(home, job_id)
        for payload in ("abc", 99999, -3, {"id": 1}, None):
            send(home, payload)
        send(home, 1, task="tlq.no_such_task")
        send(home)  # no arguments at all
        for name, job_id in ids.items():
            job = wait_for_status(env, job_id, FINAL, timeout=60)
            assert job["status"] == "failed" and rows[name][1] in job["error"], (name, job["error"])
            assert "\n" not in job["error"]
        data = hostile_images(tmp_path / "hostile-data")
        job = json.loads(
            run_tlq(
                [
                    "submit",
                    "feature-extract",
                    "--backbone",
                    "test_resnet",
                    "--no-pretrained",
                    "--data",
                    data,
                    "--wait",
                    "--json",
                ],
                env,
            ).stdout
        )
        assert worker.proc.poll() is None, worker.log()[-3000:]
        log = worker.log()
    assert job["status"] == "succeeded", job["error"]
    assert job["metrics"]["images"] == 4  # ok, 16-bit, CMYK and the non-UTF-8 name
    with open(next(a["path"] for a in job["artifacts"] if a["kind"] == "skipped")) as fh:
        reasons = {r["path"]: r["reason"] for r in csv.DictReader(fh)}
    assert reasons["hostile/zero.jpg"] == "empty file" and reasons["hostile/text.jpg"] == "not an image"
    assert reasons["hostile/truncated.png"] == "truncated image"
    assert reasons["hostile/bomb.png"].startswith("too many pixels")
    assert reasons["hostile/loop.jpg"].startswith("cannot read")
    assert "refused a message whose job id is 'abc'" in log and "job 99999 is missing; delivery dropped" in log
    assert "Received unregistered task of type 'tlq.no_such_task'" in log


def test_a_full_disk_fails_the_job_not_the_worker(tmp_path, home, pg_url, redis_url, plugin_site):
    env = tlq_env(home, database_url=pg_url, broker_url=redis_url, PYTHONPATH=str(plugin_site))
    log_path = tmp_path / "worker.log"
    log = open(log_path, "ab")
    # Files this worker writes may not grow past 1 MiB: a disk that is full for it (SIGXFSZ is ignored, so a
    # write past the limit fails with EFBIG as it would with ENOSPC).
    worker = subprocess.Popen(
        ["bash", "-c", f"ulimit -f 1024; trap '' XFSZ; exec {sys.executable} -m tlq worker --name small-disk"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wrapped = WorkerProcess(env, log_path)
    wrapped.proc, wrapped._log = worker, log
    try:
        wrapped.wait_ready()
        big = tlq_json(["submit", "blob", "--megabytes", "3"], env)
        small = tlq_json(["submit", "blob", "--megabytes", "0.1"], env)
        big_done = wait_for_status(env, big["id"], FINAL, timeout=60)
        small_done = wait_for_status(env, small["id"], FINAL, timeout=60)
        assert worker.poll() is None
    finally:
        wrapped.discard()
    assert big_done["status"] == "failed" and "could not write artifact blob.bin (File too large)" in big_done["error"]
    assert not list((home / "artifacts" / str(big["id"])).glob("*"))  # no partial file left behind
    assert small_done["status"] == "succeeded" and small_done["artifacts"][0]["bytes"] == int(0.1 * 2**20)


def test_an_artifact_path_cannot_escape_and_services_that_are_down_get_one_line(tmp_path, home, plugin_site):
    env = tlq_env(home, PYTHONPATH=str(plugin_site))
    with WorkerProcess(env, tmp_path / "worker.log"):
        escaped = json.loads(run_tlq(["submit", "escape", "--wait", "--json"], env, check=False).stdout)
    assert escaped["status"] == "failed" and "would leave the job's artifact folder" in escaped["error"]
    assert not (home / "escaped.txt").exists() and not (home.parent / "escaped.txt").exists()

    down = tlq_env(home, broker_url="redis://127.0.0.1:1/0", PYTHONPATH=str(plugin_site))
    result = run_tlq(["submit", "sleep", "--steps", "1"], down, check=False, timeout=120)  # gives up, never hangs
    assert result.returncode == 1
    line = result.stderr.strip()
    assert "\n" not in line and "cannot reach the broker at redis://127.0.0.1:1/0" in line and "TLQ_BROKER_URL" in line
    recorded = tlq_json(["jobs", "--status", "failed", "--task", "sleep"], down)[0]
    assert "cannot reach the broker" in recorded["error"]  # the row says why; nothing is silently lost

    nodb = tlq_env(home, database_url="postgresql://postgres@127.0.0.1:1/none")
    result = run_tlq(["worker"], nodb, check=False, timeout=60)
    assert result.returncode == 1 and result.stderr.strip().startswith("Error: cannot reach the database")
