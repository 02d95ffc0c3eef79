"""A live progress bar for a job, fed either by polling its row (`tlq wait`) or by callbacks (`tlq run`)."""

from __future__ import annotations

from tlq.cli.output import format_value


class JobProgress:
    """A rich progress bar showing a job's stage, steps and latest metrics."""

    def __init__(self, disable: bool = False, description: str = "starting") -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[metrics]}", markup=False),
            disable=disable,
            transient=False,
        )
        self._task = self._progress.add_task(description, total=None, metrics="")

    def __enter__(self) -> JobProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def update(self, current, total, stage, metrics: dict[str, float] | None = None) -> None:
        shown = ", ".join(f"{k}={format_value(v)}" for k, v in list((metrics or {}).items())[-4:])
        self._progress.update(
            self._task,
            completed=current or 0,
            total=total,
            description=stage or "running",
            metrics=shown,
        )
