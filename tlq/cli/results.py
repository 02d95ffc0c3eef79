"""`tlq results`, `tlq compare`, `tlq metrics`, `tlq plot` and `tlq artifacts`: reading results back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tlq.cli.options import JOB_ID
from tlq.cli.output import cell, console, duration, format_value, print_csv, print_json
from tlq.cli.state import CliState, pass_state

WHERE_HELP = """Filter jobs on final metrics, parameters, task, status, tags and dates.

\b
  tlq results --where "val_acc > 0.9 and backbone = 'vgg16'" --order-by -val_acc
  tlq results --where "params.lr <= 1e-3 and status = 'succeeded'" --csv > runs.csv
  tlq results --where "created >= '2026-11-01' and tags.dataset in ('pets', 'digits')"

\b
Names: a metric (its final value: val_acc or metrics.val_acc, val_loss, ...), a job field (id, task, backbone,
status, name, group, attempts, created, started, finished, seconds, epochs, ...), params.NAME or tags.NAME.
A metric no job has recorded yet matches nothing; a name close to a known one gets a "did you mean".
Operators: = != < <= > >= in (...) like 'res%' is [not] null, joined by and, or, not and parentheses.
Text goes in quotes; dates are 'YYYY-MM-DD' or 'YYYY-MM-DDTHH:MM' (UTC).
"""


def _number(value: Any) -> str:
    return "" if value is None else format_value(value)


def _job_ids(state: CliState, ids: tuple[int, ...], group: int | None, command: str) -> tuple[list[int], int | None]:
    """The jobs a compare or plot is about: ``--group``, or the IDs; a lone ID that names a group is that group."""
    from tlq.errors import BadInput

    if group is not None and ids:
        raise BadInput(f"give either --group or job ids to `tlq {command}`, not both")
    if group is None and len(ids) == 1 and command == "compare":
        if state.client.is_group(ids[0]):
            group = ids[0]
    if group is None and not ids:
        raise BadInput(f"give a group id (from `tlq sweep`) or job ids: tlq {command} 12 13 14")
    return state.client.jobs_of(group, [] if group is not None else ids), group


# --- tlq results --------------------------------------------------------------------------------------------


@click.command(help=WHERE_HELP)
@click.option("--where", metavar="FILTER", help="Which jobs (see above).")
@click.option("--order-by", metavar="NAMES", help="Sort by these, comma-separated; -NAME sorts descending.")
@click.option("--tag", multiple=True, metavar="KEY=VALUE", help="Only jobs with this tag; repeatable.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="At most N jobs.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of job objects, as `tlq show --json`.")
@click.option("--csv", "csv_out", is_flag=True, help="Print CSV: job fields, params.*, tags.* and final metrics.")
@pass_state
def results(state: CliState, where, order_by, tag, limit, json_out, csv_out) -> None:
    from tlq.cli.options import parse_tags
    from tlq.client import PRIMARY_METRICS

    data, used = state.client.search(where, order_by, parse_tags(tag), limit)
    state.client.add_waiting(data)
    if json_out:
        print_json(data)
        return
    params = _keys(job["params"] for job in data)
    tags = _keys(job["tags"] for job in data)
    metrics = _keys(job["metrics"] for job in data)
    if csv_out:
        header = ["id", "task", "backbone", "status", "group_id", "created_at", "finished_at"]
        header += [f"params.{k}" for k in params] + [f"tags.{k}" for k in tags] + metrics
        rows = []
        for job in data:
            row = [job[k] for k in header[:7]]
            row += [_cell(job["params"].get(k)) for k in params] + [job["tags"].get(k) for k in tags]
            rows.append(row + [job["metrics"].get(m) for m in metrics])
        print_csv(header, rows)
        return
    if not data:
        click.echo("no jobs match", err=True)
        return
    from rich.table import Table

    shown_params = state.client.varying_params([job["params"] for job in data])
    shown_metrics = used or [m for m in PRIMARY_METRICS if m in metrics][:1]
    table = Table(box=None, header_style="bold")
    for column in ["ID", "TASK", "BACKBONE", "STATUS", *shown_params, *shown_metrics, "TOOK"]:
        table.add_column(column)
    for job in data:
        table.add_row(
            str(job["id"]),
            job["task"],
            job["backbone"] or "",
            job["status"],
            *[cell(job["params"].get(k)) for k in shown_params],
            *[_number(job["metrics"].get(m)) for m in shown_metrics],
            duration(job["started_at"], job["finished_at"]),
        )
    console().print(table)


def _keys(dicts) -> list[str]:
    keys: list[str] = []
    for d in dicts:
        keys += [k for k in d or {} if k not in keys]
    return keys


def _cell(value: Any) -> Any:
    if isinstance(value, list | dict):
        import json

        return json.dumps(value)
    return value


# --- tlq compare --------------------------------------------------------------------------------------------


def print_leaderboard(client, rows: list[dict], metric: str, subject: str, goal: str | None = None) -> None:
    """The leaderboard as a table for people, the best run marked with a star."""
    from rich.table import Table
    from rich.text import Text

    goal = goal or ("min" if client.lower_is_better(metric) else "max")
    params = _keys(row["params"] for row in rows)
    better = "lower" if goal == "min" else "higher"
    table = Table(box=None, header_style="bold", title=f"{metric} leaderboard of {subject} ({better} is better)")
    for column in ["", "JOB", "BACKBONE", *params, f"BEST {metric}", "FINAL", "EPOCHS", "TIME", "STATUS"]:
        table.add_column(column)
    for row in rows:
        table.add_row(
            Text("★", style="bold green") if row["best_run"] else str(row["rank"]),
            str(row["job"]),
            row["backbone"] or "",
            *[cell(row["params"].get(k)) for k in params],
            _number(row["best"]),
            _number(row["final"]),
            _number(row["epochs"]),
            "" if row["seconds"] is None else f"{row['seconds']:.1f}s",
            row["status"],
        )
    console().print(table)


@click.command()
@click.argument("ids", nargs=-1, type=JOB_ID)
@click.option("--group", type=JOB_ID, metavar="ID", help="The jobs of this group (what `tlq sweep` printed).")
@click.option("--metric", metavar="NAME", help="Rank by this metric [default: val_acc, else the task's main one].")
@click.option("--goal", type=click.Choice(["max", "min"]), help="Whether higher or lower is better [default: by name].")
@click.option("--json", "json_out", is_flag=True, help="Print the rows, best first, as JSON.")
@click.option("--csv", "csv_out", is_flag=True, help="Print the rows, best first, as CSV.")
@pass_state
def compare(state: CliState, ids, group, metric, goal, json_out, csv_out) -> None:
    """A leaderboard of a sweep's jobs (GROUP) or of the given jobs (ID...), best first.

    \b
      tlq compare 3                       # group 3, as `tlq sweep` printed it
      tlq compare 12 14 15 --metric val_loss
    """
    job_ids, group = _job_ids(state, ids, group, "compare")
    metric = metric or state.client.default_metric(job_ids)
    rows = state.client.compare(jobs=job_ids, metric=metric, goal=goal)
    if json_out:
        print_json(rows)
        return
    if csv_out:
        params = _keys(row["params"] for row in rows)
        header = ["rank", "job", "backbone", *[f"params.{k}" for k in params]]
        header += ["best", "final", "epochs", "seconds", "status", "best_run"]
        print_csv(
            header,
            [
                [r["rank"], r["job"], r["backbone"], *[_cell(r["params"].get(k)) for k in params]]
                + [r["best"], r["final"], r["epochs"], r["seconds"], r["status"], r["best_run"]]
                for r in rows
            ],
        )
        return
    print_leaderboard(state.client, rows, metric, f"group {group}" if group is not None else f"{len(rows)} jobs", goal)


# --- tlq metrics --------------------------------------------------------------------------------------------


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--name", metavar="METRIC", help="Only this metric.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of {name, step, epoch, value, time}.")
@click.option("--csv", "csv_out", is_flag=True, help="Print CSV with the columns name, step, epoch, value, time.")
@pass_state
def metrics(state: CliState, job_id: int, name, json_out, csv_out) -> None:
    """The full history of a job's metrics: one row per step, one column per metric."""
    history = state.client.metrics(job_id, name)
    if json_out:
        print_json(history)
        return
    if csv_out:
        print_csv(["name", "step", "epoch", "value", "time"], [[m[k] for k in m] for m in history])
        return
    if not history:
        click.echo(f"job {job_id} has no metrics yet", err=True)
        return
    from rich.table import Table

    names = _keys({m["name"]: 1} for m in history)
    by_step: dict[int, dict[str, Any]] = {}
    for m in history:
        row = by_step.setdefault(m["step"], {"epoch": m["epoch"]})
        row[m["name"]] = m["value"]
        if m["epoch"] is not None:
            row["epoch"] = m["epoch"]
    table = Table(box=None, header_style="bold", title=f"metrics of job {job_id}")
    for column in ["STEP", "EPOCH", *names]:
        table.add_column(column, justify="right")
    for step in sorted(by_step):
        row = by_step[step]
        table.add_row(str(step), _number(row.get("epoch")), *[_number(row.get(n)) for n in names])
    console().print(table)


# --- tlq plot -----------------------------------------------------------------------------------------------


@click.command()
@click.argument("ids", nargs=-1, type=JOB_ID)
@click.option("--group", type=JOB_ID, metavar="ID", help="Plot every job of this group.")
@click.option("--metric", metavar="NAME", help="The metric to plot [default: val_acc, else the task's main one].")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="PNG to write.")
@click.option("--json", "json_out", is_flag=True, help='Print {"path", "metric", "curves"}.')
@pass_state
def plot(state: CliState, ids, group, metric, output, json_out) -> None:
    """Overlay one metric of several jobs in a PNG, with a legend naming backbone and parameters.

    \b
      tlq plot 12 13 14 -o val_acc.png
      tlq plot --group 3 --metric val_loss
    """
    from tlq.errors import BadInput
    from tlq.ml.plots import Curve, curve_label, plot_curves

    job_ids, group = _job_ids(state, ids, group, "plot")
    metric = metric or state.client.default_metric(job_ids)
    if metric is None:
        raise BadInput("these jobs have no metric to plot yet; name one with --metric")
    jobs = [state.client.get(job_id) for job_id in job_ids]
    varying = state.client.varying_params([job["params"] for job in jobs])
    curves, missing = [], []
    for job in jobs:
        history = [m for m in state.client.metrics(job["id"]) if m["name"] == metric]
        if not history:
            missing.append(job["id"])
            continue
        curves.append(
            Curve(job["id"], curve_label(job, varying), [m["step"] for m in history], [m["value"] for m in history])
        )
    if not curves:
        raise BadInput(f"none of jobs {', '.join(map(str, job_ids))} has the metric {metric!r}; pick one with --metric")
    if missing:
        click.echo(f"jobs without {metric} (left out): {', '.join(map(str, missing))}", err=True)
    if output is None:
        subject = f"group-{group}" if group is not None else "jobs-" + "-".join(map(str, job_ids[:6]))
        output = Path(f"{metric}-{subject}.png")
    path = plot_curves(curves, metric, output)
    if json_out:
        print_json({"path": str(path.resolve()), "metric": metric, "curves": [c.label for c in curves]})
    else:
        click.echo(f"{path}  ({len(curves)} curve{'s' if len(curves) != 1 else ''} of {metric})")


# --- tlq artifacts ------------------------------------------------------------------------------------------


@click.command()
@click.argument("job_id", type=JOB_ID)
@click.option("--kind", metavar="KIND", help="Only artifacts of this kind (model, curves, confusion_matrix, ...).")
@click.option("--copy-to", type=click.Path(file_okay=False, path_type=Path), metavar="DIR", help="Copy them into DIR.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of {kind, path, relative, bytes, sha256}.")
@pass_state
def artifacts(state: CliState, job_id: int, kind, copy_to, json_out) -> None:
    """List a job's artifacts, or copy them out (each copy checked against its recorded sha256)."""
    rows = state.client.artifacts(job_id, kind)
    if copy_to is not None:
        copied = state.client.copy_artifacts(job_id, copy_to, kind)
        if json_out:
            print_json([str(p) for p in copied])
        else:
            for path in copied:
                click.echo(path)
            click.echo(f"copied {len(copied)} artifact{'s' if len(copied) != 1 else ''} into {copy_to}", err=True)
        return
    if json_out:
        print_json(rows)
        return
    if not rows:
        click.echo(f"job {job_id} has no artifacts", err=True)
        return
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("KIND", "BYTES", "PATH"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["kind"], str(row["bytes"]), row["path"])
    console().print(table)
