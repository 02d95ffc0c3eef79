"""`make demo` runs examples/demo.py; here it runs at its --quick scale (the same jobs on a few images), so the
suite exercises the demo's own steps: digits written, a worker started, source, transfer, scratch and predict
jobs queued on the embedded default and followed to the end, the summary printed."""

import re
import subprocess
import sys

import pytest

from tests.support import REPO, job_json, tlq_env

pytestmark = pytest.mark.integration


def test_the_demo_runs_its_transfer_jobs_on_the_embedded_default(tmp_path):
    env = tlq_env(tmp_path / "home")  # no TLQ_DATABASE_URL or TLQ_BROKER_URL: SQLite for both, no server
    data = tmp_path / "demo-data"
    demo = [sys.executable, str(REPO / "examples" / "demo.py"), "--quick", "--data", str(data)]
    result = subprocess.run(demo, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:] + result.stdout[-3000:]
    assert {d: len(list((data / d).rglob("*.png"))) for d in ("source", "target-train", "target-val")} == {
        "source": 50,
        "target-train": 25,
        "target-val": 20,
    }
    summary = result.stdout[result.stdout.index("source model (job") :]
    number = r"val_acc (0|1)\.\d{3}"
    assert re.search(rf"source model \(job 1, digits 0-4\): {number}", summary)
    assert re.search(rf"from the source model \(job:1\) -> job 2: {number}", summary)
    assert re.search(rf"from random init +-> job 3: {number}", summary)
    assert re.search(r"predict with job:2 on the 20 validation digits: accuracy (0|1)\.\d{3}", summary)
    jobs = {i: job_json(env, i) for i in (1, 2, 3, 4)}
    assert all(job["status"] == "succeeded" and job["worker"] == "demo-worker" for job in jobs.values())
    assert [jobs[i]["backbone"] for i in (1, 2, 3, 4)] == ["test_resnet", "job:1", "test_resnet", "job:2"]
    assert jobs[2]["params"] == jobs[3]["params"]  # the same training, from the source model or from random init
    assert jobs[4]["task"] == "predict" and jobs[4]["metrics"]["labelled_images"] == 20
