"""A tlq setup for the dashboard's server-side tests: a real SQLite database in a temporary folder, with jobs,
metrics and artifacts written by tlq's own database code (``tests.support.populate_results`` and
``tlq.db.queries``), and files on disk where the artifact rows say."""

from __future__ import annotations

import hashlib
import io
import socket
import threading
from pathlib import Path
from types import SimpleNamespace

from PIL import Image

from tests.support import make_digits, populate_results

TOKEN = "ui-test-token-0123456789abcdef"
XSS_NAME = "<img src=x onerror=alert(1)>"
XSS_TAG = "<script>alert(2)</script>"
LONG_HISTORY = 5000  # rows of the metric ``loss`` of the ``long`` job, steps 0..4999
LONG_ERROR = "RuntimeError: <b>CUDA</b> out of memory"  # the ``long`` job failed with it
A_TRAINING = {"train_acc": [0.5, 0.8, 0.95], "train_loss": [1.2, 0.6, 0.2]}  # job a's, per epoch 1-3
CSV_TEXT = "class,images,accuracy\ncat,12,0.75\ndog,9,0.5\n" + "".join(f"c{i},{i},0.1\n" for i in range(40))


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def record_file(session, root: Path, job_id: int, name: str, kind: str, data: bytes) -> Path:
    """Writes ``data`` as the job's artifact ``name`` and records it, as a job's ArtifactStore would."""
    from tlq.db import queries

    path = root / str(job_id) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    queries.record_artifact(session, job_id, kind, f"{job_id}/{name}", len(data), hashlib.sha256(data).hexdigest())
    return path


def build_setup(root: Path, database_url: str | None = None) -> SimpleNamespace:
    """The jobs of ``populate_results`` (a-d; a and b make up the group ``group``), plus: ``xss`` (a name and a
    tag that are markup), ``long`` (failed with ``LONG_ERROR``, a 5,000-step loss history), ``retryable`` (a
    queued finetune whose spec validates: real digits, test_resnet); job ``a``'s training curves (``A_TRAINING``)
    and artifacts: a PNG, a CSV, a log, a file in a sub-folder, a recorded symbolic link that leads out, and a
    file the job never recorded. ``database_url``: a database other than the home's SQLite file."""
    from sqlalchemy import insert

    from tlq.config import Settings
    from tlq.db import queries, results
    from tlq.db.models import Metric, utcnow
    from tlq.env import Environment

    settings = Settings.load(home=root / "home", database_url=database_url, environ={})
    env = Environment(settings)
    ids = populate_results(env.db)
    artifacts = settings.artifacts_dir
    secret = root / "secret.txt"
    secret.write_text("not for the web")
    data = make_digits(root / "digits", classes=range(2), per_class=3, size=16)
    with env.db.session() as session:
        ids["xss"] = queries.create_job(
            session, task="finetune", backbone="vgg16", params={"lr": 0.1}, queue="cpu", name=XSS_NAME,
            tags={"note": XSS_TAG},
        ).id  # fmt: skip
        long = queries.create_job(session, task="finetune", backbone="vgg16", params={}, queue="cpu", name="long")
        ids["long"] = long.id
        now = utcnow()
        long.status, long.error, long.finished_at = "failed", LONG_ERROR, now
        rows = [
            {"job_id": long.id, "name": "loss", "step": step, "epoch": None, "value": 1.0 / (step + 1), "time": now}
            for step in range(LONG_HISTORY)
        ]
        rows.append({"job_id": long.id, "name": "val_acc", "step": 1, "epoch": 1, "value": 0.5, "time": now})
        # job a's training curves, beside the val_acc and val_loss of populate_results: one chart per scale
        rows += [
            {"job_id": ids["a"], "name": name, "step": epoch, "epoch": epoch, "value": value, "time": now}
            for name, values in A_TRAINING.items()
            for epoch, value in enumerate(values, start=1)
        ]
        session.execute(insert(Metric), rows)
        spec = {"data": str(data), "epochs": 1, "image_size": 32, "strategy": "full", "augment": "none"}
        ids["retryable"] = queries.create_job(
            session, task="finetune", backbone="test_resnet", pretrained=False, params=spec, queue="cpu",
            name="retryable",
        ).id  # fmt: skip
        group = results.create_group(session, "ab sweep", {"task": "finetune", "axes": {"lr": [1e-3, 1e-4]}})
        for name in ("a", "b"):
            queries.get_job(session, ids[name]).group_id = group
        a = ids["a"]
        files = {
            "png": record_file(session, artifacts, a, "curves.png", "curves", png_bytes()),
            "csv": record_file(session, artifacts, a, "per_class_accuracy.csv", "per_class", CSV_TEXT.encode()),
            "log": record_file(session, artifacts, a, "job.log", "log", b"INFO started\nINFO <b>epoch</b> 1\n"),
            "nested": record_file(session, artifacts, a, "sub/notes.txt", "notes", b"nested notes"),
        }
        leak = artifacts / str(a) / "leak.txt"
        leak.symlink_to(secret)
        queries.record_artifact(session, a, "notes", f"{a}/leak.txt", 15, hashlib.sha256(b"x").hexdigest())
        (artifacts / str(a) / "unrecorded.txt").write_text("never recorded")
    return SimpleNamespace(settings=settings, env=env, ids=ids, group=group, files=files, secret=secret, root=root)


class AppServer:
    """An ASGI app served by uvicorn in a thread of this process on 127.0.0.1 (so a test can patch what it runs),
    stopped and started again on the same port: tlq ui going away and coming back."""

    def __init__(self, app) -> None:
        self.app = app
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = self._thread = None

    def start(self) -> AppServer:
        import time

        import uvicorn

        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), f"no server on port {self.port}"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
            self._thread.join(20)
            self._server = None
