"""Printing jobs for people (rich tables) and for scripts (JSON)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click

from tlq.cli.state import CliState


def print_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, default=str))


def print_csv(header: list[str], rows: list[list[Any]]) -> None:
    """CSV on stdout; floats are written in full (repr; a whole number as an integer: counts are stored as
    floats), so they parse back to the same numbers, and text that a spreadsheet would run as a formula is
    neutralized (see ``csv_cell``)."""
    import csv
    import sys

    from tlq.ml.reports import csv_cell

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow([csv_cell(v) for v in header])
    for row in rows:
        writer.writerow(["" if v is None else exact_number(v) if isinstance(v, float) else csv_cell(v) for v in row])


def exact_number(value: float) -> str:
    """A float in full, as it parses back: ``10`` for 10.0 (a count stored as a float), else its repr."""
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def cell(value: Any) -> str:
    """A value (a parameter, a tag) in a table or a line for people: empty for a missing one, never ``None``;
    a whole float as an integer; lists, dicts and booleans as JSON writes them, as `tlq show` prints params."""
    if value is None:
        return ""
    if isinstance(value, float):
        return exact_number(value)
    if isinstance(value, bool | list | dict):
        return json.dumps(value, default=str)
    return str(value)


def console():
    """The console every table and job view is printed on.

    Markup and emoji codes are off: what tlq prints is mostly text users and plugins wrote (job names, data
    paths, params, tags, errors, metric names), and rich would read ``[/x]`` in it as a tag and fail, ``[bold]``
    as a style and drop it, and ``:thumbs_up:`` as an emoji. tlq's own styling goes in ``Text`` styles instead.
    """
    import shutil

    from rich.console import Console

    # Piped output gets a wide page rather than rich's 80 columns, so tables stay readable in logs.
    width = None if shutil.get_terminal_size((0, 0)).columns else 160
    return Console(highlight=False, soft_wrap=False, width=width, markup=False, emoji=False)


def job_dict(state: CliState, job_id: int) -> dict[str, Any]:
    """A job's JSON form, with ``waiting`` saying why it has not started when no worker takes its queue."""
    return state.client.add_waiting([state.client.get(job_id)])[0]


def duration(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    begin = dt.datetime.fromisoformat(start)
    finish = dt.datetime.fromisoformat(end) if end else dt.datetime.now(dt.UTC)
    seconds = (finish - begin).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_value(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e12:
        return str(int(value))
    return f"{value:.4g}"


def show_job(data: dict[str, Any], brief: bool = False) -> None:
    """A job for people: status line, then metrics, artifacts and the error if any."""
    from rich.text import Text

    out = console()
    color = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}.get(data["status"], "")
    title = f"job {data['id']}  {data['task']}"
    if data.get("backbone"):
        title += f" on {data['backbone']}"
    out.print(Text.assemble((title, "bold"), "  ", (data["status"], color)))
    if data.get("error"):
        out.print(f"  error: {data['error']}")
    if data.get("waiting"):
        out.print(f"  {data['waiting']}")
    if not brief:
        rows = [
            ("name", data.get("name")),
            ("queue", data.get("queue")),
            ("device", data.get("device")),
            ("ran on", data.get("ran_on")),
            ("worker", data.get("worker")),
            ("attempts", f"{data['attempts']} of {data['max_attempts']}"),
            ("created", data.get("created_at")),
            ("started", data.get("started_at")),
            ("finished", data.get("finished_at")),
            ("took", duration(data.get("started_at"), data.get("finished_at"))),
            ("tags", ", ".join(f"{k}={cell(v)}" for k, v in (data.get("tags") or {}).items())),
            ("params", json.dumps(data.get("params"), default=str)),
        ]
        progress = data.get("progress") or {}
        if data["status"] in ("queued", "running") and progress.get("stage"):
            total = progress.get("total")
            done = progress.get("current")
            rows.append(("progress", f"{progress['stage']} {format_value(done or 0)}/{format_value(total or 0)}"))
        for key, value in rows:
            if value not in (None, ""):
                out.print(f"  {key:<9} {value}")
    if data.get("metrics"):
        out.print("  metrics: " + ", ".join(f"{k}={format_value(v)}" for k, v in sorted(data["metrics"].items())))
    if data.get("artifacts"):
        out.print("  artifacts:")
        for artifact in data["artifacts"]:
            out.print(f"    {artifact['kind']:<20} {artifact['path']}")


def emit_job(state: CliState, job_id: int, json_out: bool, brief: bool = False) -> str:
    """Prints a job as JSON or for people; returns its status."""
    data = job_dict(state, job_id)
    if json_out:
        print_json(data)
    else:
        show_job(data, brief=brief)
    return data["status"]
