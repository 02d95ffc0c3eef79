"""`tlq jobs`, `tlq show`, `tlq wait` and `tlq cancel`: following and steering jobs."""

from __future__ import annotations

import time

import click

from tlq.cli.completion import complete_backbone, complete_job_id, complete_live_job_id
from tlq.cli.options import JOB_ID, parse_tags
from tlq.cli.output import duration, emit_job, format_value, print_json
from tlq.cli.state import CliState, pass_state

STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"]


@click.command()
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--task", metavar="TASK", help="Only jobs of this task.")
@click.option("--backbone", metavar="NAME", help="Only jobs on this backbone.", shell_complete=complete_backbone)
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="Only jobs with this tag; repeatable.")
@click.option("--group", type=JOB_ID, metavar="ID", help="Only the jobs of this group (a sweep).")
@click.option("--name", metavar="TEXT", help="Only jobs whose name contains TEXT, in any case.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N jobs.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of job objects.")
@pass_state
def jobs(state: CliState, status, task, backbone, tag, group, name, limit, json_out) -> None:
    """List jobs, newest first."""
    data = state.client.list_jobs(
        status=status, task=task, backbone=backbone, tags=parse_tags(tag), group=group, limit=limit, name=name
    )
    state.client.add_waiting(data)
    if json_out:
        print_json(data)
        return
    from rich.table import Table

    from tlq.cli.output import console

    table = Table(box=None, header_style="bold")
    for column in ("ID", "TASK", "BACKBONE", "NAME", "STATUS", "PROGRESS", "QUEUE", "WORKER", "CREATED", "TOOK"):
        table.add_column(column)
    for job in data:
        progress = job["progress"]
        shown = ""
        if job["status"] == "running" and progress["total"]:
            shown = f"{100 * (progress['current'] or 0) / progress['total']:.0f}% {progress['stage'] or ''}"
        elif job["status"] == "succeeded" and job["metrics"]:
            key = next(
                (k for k in ("val_acc", "accuracy", "target_prob", "success_rate", "images") if k in job["metrics"]),
                None,
            )
            shown = f"{key}={format_value(job['metrics'][key])}" if key else ""
        elif job["status"] == "failed" and job["error"]:
            shown = job["error"][:60]
        elif job["waiting"]:
            shown = job["waiting"].split(":")[0]
        table.add_row(
            str(job["id"]),
            job["task"],
            job["backbone"] or "",
            job["name"] or "",
            job["status"],
            shown,
            job["queue"],
            job["worker"] or "",
            job["created_at"][:19].replace("T", " "),
            duration(job["started_at"], job["finished_at"]),
        )
    console().print(table)


@click.command()
@click.argument("job_id", type=JOB_ID, shell_complete=complete_job_id)
@click.option("--json", "json_out", is_flag=True, help="Print the job object.")
@pass_state
def show(state: CliState, job_id: int, json_out: bool) -> None:
    """Show a job: status, parameters, metrics (latest values) and artifacts."""
    emit_job(state, job_id, json_out)


def wait_for_job(state: CliState, job_id: int, timeout: float | None, quiet: bool = False, poll: float = 0.5) -> int:
    """Follows a job with a progress bar until it ends; 0 if it succeeded, 1 otherwise."""
    from tlq.cli.progress import JobProgress

    with JobProgress(disable=quiet, description="queued") as bar:

        def show(job: dict) -> None:
            if job["status"] == "queued":
                bar.update(0, None, "queued", {})
            else:
                progress = job["progress"]
                metrics = job["metrics"] if job["status"] == "running" else {}
                bar.update(progress["current"], progress["total"], progress["stage"] or job["status"], metrics)

        try:
            job = state.client.wait(job_id, timeout, poll=poll, on_update=show)
        except TimeoutError as exc:
            click.echo(str(exc), err=True)
            return 1
    return 0 if job["status"] == "succeeded" else 1


def wait_for_jobs(state: CliState, job_ids: list[int], quiet: bool = False, poll: float = 1.0) -> int:
    """Follows several jobs (a sweep) with one bar counting finished jobs; 0 if all succeeded, 1 otherwise."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from tlq.client import FINAL

    pending = set(job_ids)
    statuses: dict[int, str] = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=quiet) as progress:
        bar = progress.add_task("jobs done", total=len(job_ids))
        while pending:
            for job_id, status in state.client.statuses(pending).items():
                if status in FINAL:
                    statuses[job_id] = status
                    pending.discard(job_id)
            failed = sum(1 for s in statuses.values() if s != "succeeded")
            label = "jobs done" + (f" ({failed} failed)" if failed else "")
            progress.update(bar, completed=len(statuses), description=label)
            if pending:
                time.sleep(poll)
    return 0 if all(s == "succeeded" for s in statuses.values()) else 1


@click.command()
@click.argument("job_id", type=JOB_ID, shell_complete=complete_live_job_id)
@click.option("--timeout", type=float, metavar="SECONDS", help="Give up waiting after this long (exit 1).")
@click.option("--json", "json_out", is_flag=True, help="No bar; print the job as JSON at the end.")
@pass_state
def wait(state: CliState, job_id: int, timeout: float | None, json_out: bool) -> int:
    """Wait for a job with a progress bar; exit 0 if it succeeded, 1 otherwise."""
    state.client.get(job_id)  # an unknown id is an error before any bar is drawn
    code = wait_for_job(state, job_id, timeout, quiet=json_out)
    emit_job(state, job_id, json_out, brief=True)
    return code


@click.command()
@click.argument("job_id", type=JOB_ID, shell_complete=complete_live_job_id)
@pass_state
def cancel(state: CliState, job_id: int) -> int:
    """Cancel a job: a queued job never starts; a running one stops at its next step."""
    outcome = state.client.cancel(job_id)
    if outcome == "cancelled":
        click.echo(f"job {job_id} cancelled")
    elif outcome == "requested":
        click.echo(f"job {job_id} is running; it stops at its next step")
    else:
        click.echo(f"job {job_id} already {outcome}; nothing to cancel")
    return 0
