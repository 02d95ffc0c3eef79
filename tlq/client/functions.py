"""The client's operations as plain functions, one ``Client`` per call, from the TLQ_* environment or the keyword
settings (``home``, ``database_url``, ``broker_url``, ``artifacts_dir``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from tlq.client.api import Client

_SETTINGS_KEYS = ("home", "database_url", "broker_url", "artifacts_dir")


def _client(kwargs: dict[str, Any], strict: bool = False) -> Client:
    """A Client from the settings keywords, which are taken out of ``kwargs``; with ``strict``, any other
    keyword is an error (a typo such as ``hom=`` must not fall back to the default setup)."""
    client = Client(**{k: kwargs.pop(k) for k in _SETTINGS_KEYS if k in kwargs})
    if strict and kwargs:
        raise TypeError(f"unexpected keyword {', '.join(sorted(kwargs))}; settings are {', '.join(_SETTINGS_KEYS)}")
    return client


def submit(task: str, **options: Any) -> int:
    """Queues a job; see ``Client.submit``."""
    return _client(options).submit(task, **options)


def sweep(task: str, grid: dict[str, Iterable[Any]], **options: Any) -> dict[str, Any]:
    """Queues a sweep as one group; see ``Client.sweep``."""
    return _client(options).sweep(task, grid, **options)


def get(job_id: int, **settings: Any) -> dict[str, Any]:
    """A job as `tlq show --json` prints it; see ``Client.get``."""
    return _client(settings, strict=True).get(job_id)


def list_jobs(**options: Any) -> list[dict[str, Any]]:
    """Jobs, newest first; see ``Client.list_jobs``. ``tlq.client.list`` is this function."""
    return _client(options).list_jobs(**options)


def results(where: str | None = None, order_by: str | None = None, **options: Any) -> list[dict[str, Any]]:
    """Jobs matching a filter; see ``Client.results``."""
    return _client(options).results(where, order_by, **options)


def wait(
    job_id: int,
    timeout: float | None = None,
    poll: float = 0.5,
    on_update: Callable[[dict[str, Any]], None] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Waits for a job to end; see ``Client.wait``."""
    return _client(settings, strict=True).wait(job_id, timeout, poll, on_update)


def metrics(job_id: int, name: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """A job's metric history; see ``Client.metrics``."""
    return _client(settings, strict=True).metrics(job_id, name)


def compare(group: int | None = None, jobs: Iterable[int] = (), **options: Any) -> list[dict[str, Any]]:
    """A leaderboard, best first; see ``Client.compare``."""
    return _client(options).compare(group, jobs, **options)


def artifacts(job_id: int, kind: str | None = None, **settings: Any) -> list[dict[str, Any]]:
    """A job's artifacts; see ``Client.artifacts``."""
    return _client(settings, strict=True).artifacts(job_id, kind)
