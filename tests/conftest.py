"""Fixtures: real services (Redis, PostgreSQL) that must be up, fresh databases, and real image data."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

import pytest

from tests.support import REDIS_URL, make_digits, postgres_database, run_job_here

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _redis_numbers() -> itertools.cycle:
    """Redis database numbers for this test process: 1-13 split between pytest-xdist workers (14 is the
    benchmark's, 0 and 15 are left alone), so parallel tests never share one."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0")[2:] or 0)
    count = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    numbers = [n for n in range(1, 14) if n % count == worker % count]
    return itertools.cycle(numbers)


_redis_db_numbers = _redis_numbers()


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


TESTS = Path(__file__).resolve().parent
SERVICE_FIXTURES = {"services", "pg_url", "redis_url"}


def pytest_collection_modifyitems(config, items) -> None:
    """Marks tests by where they are and what they use: everything under tests/integration is ``integration``,
    and a test that needs Redis or PostgreSQL (a service fixture, or a database fixture run on ``postgresql``)
    is ``services``. `make test-fast` runs neither."""
    for item in items:
        top = Path(str(item.fspath)).resolve().relative_to(TESTS).parts[0]
        params = getattr(getattr(item, "callspec", None), "params", {})
        if top == "integration":
            item.add_marker(pytest.mark.integration)
        if top == "integration" or SERVICE_FIXTURES & set(item.fixturenames) or "postgresql" in params.values():
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session")
def services() -> None:
    """Redis and PostgreSQL must be up: a missing service fails the suite, never skips it (`make services`).

    Under `make test-fast` (``TLQ_TESTS_WITHOUT_SERVICES=1``) reaching for them fails at once: such a test lacks
    its ``services`` mark.
    """
    if os.environ.get("TLQ_TESTS_WITHOUT_SERVICES"):
        pytest.fail("this test needs Redis or PostgreSQL but is not marked `services` (tests/conftest.py marks it)")
    missing = [name for name, port in (("Redis", 6379), ("PostgreSQL", 5432)) if not _reachable(port)]
    if missing:
        pytest.fail(f"{' and '.join(missing)} not reachable on 127.0.0.1; run `make services` (make test does)")


@pytest.fixture
def pg_url(services) -> str:
    """A fresh, empty PostgreSQL database for one test, dropped afterwards."""
    with postgres_database() as url:
        yield url


@pytest.fixture
def redis_url(services) -> str:
    """A Redis database number of its own, emptied first."""
    import redis

    number = next(_redis_db_numbers)
    url = f"{REDIS_URL}/{number}"
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory) -> Path:
    """Real handwritten digits (scikit-learn's scans) as PNG files in class folders: 10 classes x 12."""
    return make_digits(tmp_path_factory.mktemp("digits"), per_class=12)


@pytest.fixture
def home(tmp_path) -> Path:
    return tmp_path / "tlq-home"


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The example third-party plugin and the test-only tasks, pip-installed into a folder of their own.

    Processes that get it on PYTHONPATH see their tasks through the ``tlq.tasks`` entry points, exactly as
    after a `pip install`; tlq itself is not touched.
    """
    from tests.support import REPO, install_packages

    site = tmp_path_factory.mktemp("plugin-site")
    return install_packages(
        site, REPO / "examples" / "tlq-example-plugin", REPO / "tests" / "fixtures" / "tlq-test-tasks"
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A small model tlq fine-tuned itself, offline: test_resnet on real digits 0-4 (80 each), full training.

    Returns a namespace with ``env`` (the tlq environment holding the job), ``job`` (its JSON form),
    ``backbone`` ("job:ID"), ``data`` (the training folder) and ``val`` (20 other digits per class).
    """
    from types import SimpleNamespace

    from tlq.config import Settings
    from tlq.env import Environment
    from tlq.jobs.spec import JobSpec

    root = tmp_path_factory.mktemp("trained")
    env = Environment(Settings.load(home=root / "home", environ={}))
    data = make_digits(root / "source", classes=range(5), per_class=80)
    val = make_digits(root / "val", classes=range(5), per_class=20, offset=80)
    spec = JobSpec(
        task="finetune",
        backbone="test_resnet",
        pretrained=False,
        params={
            "data": str(data),
            "strategy": "full",
            "epochs": 6,
            "lr": 2e-3,
            "image_size": 64,
            "augment": "none",
            "batch_size": 16,
            # fp32, not auto: auto picks by timing this machine, and the tests' measured thresholds need the same
            # model on every run.
            "precision": "fp32",
        },
    )
    job = run_job_here(env, spec)
    return SimpleNamespace(env=env, job=job, backbone=f"job:{job['id']}", data=data, val=val, home=root / "home")
