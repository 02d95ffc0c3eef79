"""Shell completion of job ids and backbone names, on top of Click's own (commands, options, choices):

    eval "$(_TLQ_COMPLETE=bash_source tlq)"     # in ~/.bashrc; zsh_source and fish_source for the others

A completion runs on every Tab, so it stays light and says nothing when it cannot help: job ids come from one
query of the job database (never created or migrated here), and timm's names from a list kept under
``TLQ_HOME/cache`` (named by timm's version), written on the first completion that needs it, since importing
timm takes seconds. Nothing here is imported by `tlq --help`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click
from click.shell_completion import CompletionItem

if TYPE_CHECKING:
    from tlq.config import Settings

MAX_JOBS = 200  # the newest job ids offered on one Tab
JOB_SCHEME = "job:"
MAX_NAMES_BYTES = 16 * 2**20  # timm 1.0's list is about 80 kB


def complete_job_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """Any job's id (`tlq show`, `tlq retry`), newest first, each with its task, backbone, status and name."""
    return _job_ids(ctx, incomplete, statuses=None)


def complete_live_job_id(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The ids of queued and running jobs, the only ones `tlq cancel` and `tlq wait` have anything to do with."""
    return _job_ids(ctx, incomplete, statuses=("queued", "running"))


def complete_backbone(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """timm's architectures and pretrained tags, and ``job:ID`` of the jobs whose model a job can build on; in a
    comma-separated list (`tlq sweep --backbone vgg16,res`), the last name."""
    done, _, current = incomplete.rpartition(",")
    prefix = f"{done}," if done else ""
    names: list[CompletionItem] = []
    try:
        settings = _settings(ctx)
        if JOB_SCHEME.startswith(current) or current.startswith(JOB_SCHEME):
            names += _model_jobs(settings, current[len(JOB_SCHEME) :] if current.startswith(JOB_SCHEME) else "")
        if not current.startswith(JOB_SCHEME):
            names += [CompletionItem(name) for name in timm_names(settings.home) if name.startswith(current)]
    except Exception:  # a completion must never print a traceback into the user's command line
        return []
    return [CompletionItem(prefix + item.value, help=item.help) for item in names]


def _settings(ctx: click.Context) -> Settings:
    """The settings the command line in progress names (the root's --home and the rest), else TLQ_*."""
    from tlq.config import FLAGS, Settings

    given = ctx.find_root().params
    return Settings.load(**{flag: given.get(flag) for flag in FLAGS})


def _database(settings: Settings):
    """The job database, or None where there is none yet (a SQLite file that does not exist stays so)."""
    from sqlalchemy.engine import make_url

    from tlq.db import Database

    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and not (url.database and Path(url.database).is_file()):
        return None
    return Database(settings.database_url, migrate=False)


def _job_ids(ctx: click.Context, incomplete: str, statuses: tuple[str, ...] | None) -> list[CompletionItem]:
    if incomplete and not incomplete.isdigit():
        return []
    try:
        return _job_rows(_settings(ctx), incomplete, statuses, model_only=False)
    except Exception:
        return []


def _model_jobs(settings: Settings, incomplete: str) -> list[CompletionItem]:
    if incomplete and not incomplete.isdigit():
        return []
    return [
        CompletionItem(JOB_SCHEME + item.value, help=item.help)
        for item in _job_rows(settings, incomplete, ("succeeded",), model_only=True)
    ]


def _job_rows(
    settings: Settings, incomplete: str, statuses: Iterable[str] | None, model_only: bool
) -> list[CompletionItem]:
    """Newest first, the jobs whose id starts with ``incomplete`` (with a model card, for ``model_only``)."""
    from sqlalchemy import String, cast, select

    from tlq.db.models import Artifact, Job

    database = _database(settings)
    if database is None:
        return []
    query = select(Job.id, Job.task, Job.backbone, Job.status, Job.name).order_by(Job.id.desc()).limit(MAX_JOBS)
    if incomplete:
        query = query.where(cast(Job.id, String).startswith(incomplete))
    if statuses is not None:
        query = query.where(Job.status.in_(list(statuses)))
    if model_only:
        query = query.where(
            select(Artifact.id).where(Artifact.job_id == Job.id, Artifact.kind == "model_card").exists()
        )
    try:
        with database.read_session() as session:
            rows = session.execute(query).all()
    finally:
        database.dispose()
    return [
        CompletionItem(str(job_id), help=_one_line(" ".join(part for part in (task, backbone, status, name) if part)))
        for job_id, task, backbone, status, name in rows
    ]


def _one_line(text: str, limit: int = 100) -> str:
    """A help text the shells' protocols carry: zsh's reads type, value and help a line each, so a newline in a
    job's name would start a made-up completion; control characters (escapes) would reach the terminal."""
    return "".join(c if c.isprintable() else " " for c in text)[:limit]


def timm_names(home: Path) -> list[str]:
    """timm's architecture names and pretrained tags (``resnet50``, ``resnet50.a1_in1k``), from the list under
    ``home/cache`` for the installed timm, written (to a temporary name, then renamed) when it is missing."""
    from importlib.metadata import version

    release = re.sub(r"[^\w.]", "_", version("timm"))
    cache = Path(home) / "cache" / f"timm-{release}-names.txt"
    try:  # only a plain file of a list's size: not a symlink to /dev/zero, a FIFO or a huge file, read on every Tab
        if cache.is_file() and cache.stat().st_size <= MAX_NAMES_BYTES:
            return cache.read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError):  # unreadable or not text: listed again, and replaced
        pass
    import timm

    names = sorted(set(timm.list_models()) | set(timm.list_pretrained()))
    partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    try:  # a cache that cannot be written costs the next Tab the listing again, not the names
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text("\n".join(names) + "\n", encoding="utf-8")
        partial.replace(cache)
    except OSError:
        partial.unlink(missing_ok=True)
    return names
