"""A job's own log lines (what its task writes to ``ctx.log``), kept as its ``job.log`` artifact so that `tlq ui`
shows them on the job's page, as ClearML shows a task's console.

Bounded (the first ``MAX_LINES`` lines, each cut to ``MAX_LINE``), masked (``mask_secrets_in``), written once when
the task ends, through the job's artifact store like any other file: a run that lost its job writes nothing.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

from tlq.config import mask_secrets_in
from tlq.errors import JobCancelled, JobTimedOut
from tlq.plugins.context import JobLost

LOG_NAME = "job.log"
LOG_KIND = "log"
MAX_LINES = 2000
MAX_LINE = 2000

log = logging.getLogger("tlq.worker")


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        self.lines: list[str] = []
        self.dropped = 0

    def emit(self, record: logging.LogRecord) -> None:
        if len(self.lines) >= MAX_LINES:
            self.dropped += 1
            return
        try:
            text = self.format(record)
        except Exception:  # a record whose arguments do not format is not worth failing the job over
            text = f"{record.levelname} {record.msg!r}"
        self.lines.append(mask_secrets_in(text)[:MAX_LINE])


def forget(logger: logging.Logger) -> None:
    """Unregisters a job's own logger (``tlq.job.<id>``) once its job ends: a pool process that runs many jobs would
    otherwise keep one logger per job for ever, and every ``setLevel`` in the process walks them all."""
    if logger.name.startswith("tlq.job.") and not logger.handlers:
        logging.Logger.manager.loggerDict.pop(logger.name, None)


@contextlib.contextmanager
def job_log(ctx) -> Iterator[None]:
    """Collects the lines the task logs to ``ctx.log`` while the block runs, then writes them as the job's
    ``job.log`` artifact (with the error, when the task raised one). Nothing is written when the task logged
    nothing, or when the job may not write any more (cancelled, timed out, its lease lost); a log that cannot be
    written is left out, and the job ends as it would have."""
    logger: logging.Logger = ctx.log
    handler = _Lines()
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    failure: BaseException | None = None
    try:
        yield
    except BaseException as exc:
        failure = exc
        raise
    finally:
        logger.removeHandler(handler)
        if logger.level != level:  # setLevel clears the cache of every logger of the process: not on every job
            logger.setLevel(level)
        forget(logger)
        lines = handler.lines
        if lines and not isinstance(failure, JobCancelled | JobTimedOut | JobLost):  # those may write no more
            if handler.dropped:
                lines.append(f"... {handler.dropped} more lines not kept (a job's log keeps its first {MAX_LINES})")
            if isinstance(failure, Exception):
                lines.append(mask_secrets_in(f"ERROR {type(failure).__name__}: {failure}")[:MAX_LINE])
            try:
                ctx.artifacts.write_text(LOG_KIND, LOG_NAME, "\n".join(lines) + "\n")
            except Exception as exc:  # the job's outcome stands whatever happens to its log
                log.debug("job %s: its log was not kept (%s)", ctx.job_id, exc)
