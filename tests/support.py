"""Helpers for tests: real data on disk, the real `tlq` command, and real worker processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
REDIS_URL = "redis://127.0.0.1:6379"
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"


def _pg_admin(statement: str) -> None:
    import sqlalchemy as sa

    from tlq.config import normalize_database_url

    admin = sa.create_engine(normalize_database_url(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        admin.dispose()


def create_postgres_database(name: str) -> str:
    """A fresh, empty PostgreSQL database called ``name`` (one of that name is dropped first); returns its URL."""
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _pg_admin(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}"


@contextlib.contextmanager
def postgres_database():
    """A fresh, empty PostgreSQL database (its URL), dropped afterwards."""
    import uuid

    name = f"tlq_test_{uuid.uuid4().hex[:12]}"
    url = create_postgres_database(name)
    try:
        yield url
    finally:  # a new admin connection: a pooled one may not have lived through a test that restarts PostgreSQL
        _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def install_packages(site: Path, *packages: Path) -> Path:
    """pip-installs ``packages`` (plugin projects) into the folder ``site``, as a user's `pip install` would but
    without touching the environment; a process with ``site`` on PYTHONPATH sees their entry points."""
    for package in packages:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site)]
            + [str(package)],
            check=True,
            capture_output=True,
        )
    return site


def make_digits(
    root: Path,
    classes=range(10),
    per_class: int = 20,
    size: int = 32,
    offset: int = 0,
    fmt: str = "png",
    quality: int = 75,
) -> Path:
    """Writes scikit-learn's handwritten digits (real scans, shipped in the package) as image files in
    class folders, ``per_class`` of each class starting at the ``offset``-th example of that class (JPEG files
    at ``quality``)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    root = Path(root)
    for label in classes:
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        picks = np.flatnonzero(digits.target == label)[offset : offset + per_class]
        for i in picks:
            array = (digits.images[i] / 16.0 * 255).astype(np.uint8)
            image = Image.fromarray(array, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
            image.save(root / str(label) / f"{label}_{i}.{fmt}", **({"quality": quality} if fmt == "jpg" else {}))
    return root


def tlq_env(home: Path, database_url: str | None = None, broker_url: str | None = None, **extra: str) -> dict:
    """An environment in which `tlq` uses ``home`` and the given services, and never waits on the network."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TLQ_")}
    env.update(
        TLQ_HOME=str(home),
        HF_HUB_OFFLINE="1",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",  # tables print the same whatever terminal (or none) runs the tests
        TLQ_STALE_AFTER=env.get("TLQ_STALE_AFTER", "60"),
    )
    if database_url:
        env["TLQ_DATABASE_URL"] = database_url
    if broker_url:
        env["TLQ_BROKER_URL"] = broker_url
    env.update(extra)
    return env


def run_tlq(args: list[str], env: dict, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
    """Runs the real `tlq` command line in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "tlq", *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"tlq {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}\n{result.stdout}"
        )
    return result


def tlq_json(args: list[str], env: dict, timeout: float = 180):
    return json.loads(run_tlq([*args, "--json"], env, timeout=timeout).stdout)


class WorkerProcess:
    """A real `tlq worker` in its own process group, logging to a file."""

    def __init__(self, env: dict, log_path: Path, *args: str) -> None:
        self.env = env
        self.log_path = Path(log_path)
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self.name: str | None = None
        if "--name" in self.args:
            self.name = self.args[self.args.index("--name") + 1]

    def start(self) -> WorkerProcess:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tlq", "worker", *self.args],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout: float = 90) -> WorkerProcess:
        """Waits until the worker has registered and its consumer is up."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
            if " ready." in self.log():
                return self
            time.sleep(0.3)
        raise AssertionError(f"worker not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Sends ``sig`` to the worker's whole process group (its pool children too)."""
        if self.proc:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def stop(self, timeout: float = 30) -> float:
        """Stops the worker as a supervisor does (SIGTERM to its main process); returns seconds it took.

        What is left of the process group after that (or after ``timeout``) is killed.
        """
        if self.proc is None:
            return 0.0
        start = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - start
        self.kill(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()
        return took

    def __enter__(self) -> WorkerProcess:
        return self.start().wait_ready()

    def discard(self) -> None:
        """Kills the worker's process group at once: for teardown once a test has what it needs (a graceful
        stop costs Celery's 4-6 s of shutdown, which `stop` and the shutdown tests exercise)."""
        if self.proc is None:
            return
        self.kill(signal.SIGKILL)
        self.proc.wait(10)
        self._log.close()

    def __exit__(self, *exc) -> None:
        self.discard()


def figure(name: str, **values) -> None:
    """Prints a measured figure; the README's Reliability table quotes them
    (`pytest tests/integration -s | grep FIGURE`)."""
    print(
        f"FIGURE {name}: "
        + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())
    )


def job_json(env: dict, job_id: int) -> dict:
    """The job as `tlq show --json` prints it, read in this process (cheaper than a CLI call when polling)."""
    from tlq.config import Settings
    from tlq.db import Database, queries

    settings = Settings.load(environ=env)
    db = Database(settings.database_url)
    try:
        with db.read_session() as session:
            return queries.job_as_dict(session, queries.get_job(session, int(job_id)), settings.artifacts_dir)
    finally:
        db.engine.dispose()


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (links not followed): files by content, links by target, folders as '/'."""
    listing = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        listing[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else "/" if path.is_dir() else path.read_text()
    return listing


def run_job_here(env, spec) -> dict:
    """Runs a job in this process (as `tlq run` does) and returns it as `tlq show --json` prints it, asserting
    that it succeeded; ``files`` maps each artifact kind to its path and ``history`` each metric to its
    (step, value) points."""
    from tlq.db import queries
    from tlq.jobs.submit import run_here

    job_id = run_here(env, spec)
    with env.db.read_session() as session:
        job = queries.job_as_dict(session, queries.get_job(session, job_id), env.settings.artifacts_dir)
        history: dict[str, list] = {}
        for metric in queries.metric_history(session, job_id):
            history.setdefault(metric.name, []).append((metric.step, metric.value))
    assert job["status"] == "succeeded", job["error"]
    job["files"] = {a["kind"]: a["path"] for a in job["artifacts"]}
    job["history"] = history
    return job


def finetune_here(env, backbone: str, data, weights=None, **params) -> dict:
    """A finetune of a randomly initialized ``backbone`` (or one from ``weights``) on ``data``, run in this
    process (`tlq run`); returns the job as `run_job_here` does."""
    from tlq.jobs.spec import JobSpec

    spec = JobSpec(
        task="finetune", backbone=backbone, pretrained=False, weights=weights, params={"data": str(data), **params}
    )
    return run_job_here(env, spec)


def wait_for_status(env: dict, job_id: int, statuses: tuple[str, ...], timeout: float = 180) -> dict:
    """Polls the job's row until it reaches one of ``statuses``."""
    from sqlalchemy.exc import OperationalError

    deadline = time.monotonic() + timeout
    job = {}
    while time.monotonic() < deadline:
        try:
            job = job_json(env, job_id)
        except OperationalError:  # the database is restarting under a fault test; ask again
            time.sleep(0.5)
            continue
        if job["status"] in statuses:
            return job
        time.sleep(0.3)
    raise AssertionError(f"job {job_id} still {job.get('status')} after {timeout} s: {job}")


# Finetune jobs with known results, for the query tests.
# job name -> (backbone, params, tags, val_acc history by epoch, val_loss history)
RESULT_RUNS = {
    "a": (
        "vgg16",
        {"lr": 1e-3, "data": "./pets", "strategy": "full"},
        {"dataset": "pets"},
        [0.70, 0.91, 0.88],
        [0.9, 0.3, 0.35],
    ),
    "b": (
        "vgg16",
        {"lr": 1e-4, "data": "./pets", "strategy": "full"},
        {"dataset": "pets"},
        [0.60, 0.80, 0.86],
        [1.0, 0.5, 0.4],
    ),
    "c": (
        "resnet50",
        {"lr": 1e-3, "data": "./pets", "strategy": "freeze"},
        {"dataset": "digits"},
        [0.93, 0.95],
        [0.2, 0.15],
    ),
    "d": ("resnet50", {"lr": 1e-4, "data": "./pets", "strategy": "freeze"}, {'odd "key"': "x"}, [], []),
}


def populate_results(database) -> dict[str, int]:
    """Writes the RESULT_RUNS jobs and their per-epoch metrics into ``database``; returns name -> job id.

    Job n was created on 2026-11-(20+n) at 12:00 UTC and, if it has metrics, succeeded after 30 x (n+1) s.
    """
    import datetime as dt

    from tlq.db import queries
    from tlq.db.models import JobStatus

    database.ensure_schema()
    ids = {}
    start = dt.datetime(2026, 11, 20, 12, 0, tzinfo=dt.UTC)
    with database.session() as session:
        for n, (name, (backbone, params, tags, accs, losses)) in enumerate(RESULT_RUNS.items()):
            job = queries.create_job(
                session, task="finetune", backbone=backbone, params=params, tags=tags, queue="cpu", name=name
            )
            ids[name] = job.id
            job.created_at = start + dt.timedelta(days=n)
            if accs:
                job.status = JobStatus.SUCCEEDED.value
                job.started_at = job.created_at
                job.finished_at = job.created_at + dt.timedelta(seconds=30 * (n + 1))
            for epoch, (acc, loss) in enumerate(zip(accs, losses, strict=True), start=1):
                queries.record_metric(session, job.id, "val_acc", acc, step=epoch, epoch=epoch)
                queries.record_metric(session, job.id, "val_loss", loss, step=epoch, epoch=epoch)
            if accs:
                queries.record_metric(session, job.id, "train_images", 100, step=0)
    return ids


class ToggleProxy:
    """A TCP proxy in front of a real server (Redis, PostgreSQL) that a test can take down and bring back.

    Down, it refuses new connections (nothing listens on its port) and cuts the open ones, as a server that
    restarts or a network that drops does; the server behind it keeps its state.
    """

    def __init__(self, upstream_port: int, host: str = "127.0.0.1") -> None:
        self.host, self.upstream_port = host, upstream_port
        with socket.socket() as probe:
            probe.bind((host, 0))
            self.port = probe.getsockname()[1]
        self._listener = None
        self._conns: list = []
        self._lock = threading.Lock()

    def url(self, scheme_and_rest: str) -> str:
        """``scheme_and_rest`` with ``{port}`` filled in, e.g. ``redis://127.0.0.1:{port}/0``."""
        return scheme_and_rest.format(port=self.port)

    def up(self) -> ToggleProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.host, self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:  # wakes the blocked accept(); a close alone leaves the port listening on Linux
                listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            listener.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            try:
                conn.shutdown(2)
            except OSError:
                pass
            conn.close()

    def _accept(self, listener) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection((self.host, self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source, target) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(2)
                except OSError:
                    pass


def sql_rows(database_url: str, sql: str, **params) -> list:
    """The rows of one SQL query, run straight against a tlq database (not through tlq)."""
    import sqlalchemy as sa

    from tlq.config import normalize_database_url

    engine = sa.create_engine(normalize_database_url(database_url))
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql), params).all()
    finally:
        engine.dispose()


def metric_steps(database_url: str, job_id: int) -> dict[str, list[int]]:
    """Each metric name of a job and the steps it has rows for, read straight from its database."""
    steps: dict[str, list[int]] = {}
    for name, step in sql_rows(
        database_url, "SELECT name, step FROM metrics WHERE job_id = :j ORDER BY name, step", j=job_id
    ):
        steps.setdefault(name, []).append(step)
    return steps


def wait_until(condition, timeout: float, what: str):
    """Polls ``condition()`` until it returns something true, and returns that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def finetune_args(data, epochs: int) -> list:
    """`tlq submit` arguments of a small full finetune of test_resnet (about a second an epoch on 2 cores)."""
    return [
        "submit",
        "finetune",
        "--backbone",
        "test_resnet",
        "--no-pretrained",
        "--data",
        data,
        "--strategy",
        "full",
        "--epochs",
        str(epochs),
        "--image-size",
        "96",
        "--augment",
        "none",
        "--batch-size",
        "16",
        "--loader-workers",
        "0",
    ]
