"""`tlq submit TASK`, `tlq run TASK`, `tlq sweep TASK` and `tlq retry ID`.

Each installed task becomes a subcommand whose options come from its parameter model; the options every
job shares (backbone, device, priority, ...) are added here once.
"""

from __future__ import annotations

import click

from tlq.cli.completion import complete_backbone, complete_job_id
from tlq.cli.options import JOB_ID, option_for_field, parse_tags, sweep_separator
from tlq.cli.output import emit_job
from tlq.cli.state import CliState, pass_state

COMMON = {"backbone", "weights", "pretrained", "device", "priority", "name", "max_attempts", "timeout", "tag"}


def _common_options(mode: str, many_backbones: bool = False) -> list[click.Option]:
    sweep = mode == "sweep"
    # A task that compares backbones takes the list whole, in every job of a sweep too (each ranks them all).
    listing = " Comma-separate to compare several." if many_backbones else " Comma-separate to sweep." if sweep else ""
    options = [
        click.Option(
            ["--backbone"],
            metavar="NAME" + (",..." if listing else ""),
            help="timm model name (resnet18, vgg16, ...) or job:ID." + listing,
            shell_complete=complete_backbone,
        ),
        click.Option(["--weights"], metavar="FILE", help="Local weights (.safetensors, or .pth read weights-only)."),
        click.Option(
            ["--pretrained/--no-pretrained"],
            default=True,
            help="Load the backbone's pretrained weights.  [default: on]",
        ),
        click.Option(
            ["--device"],
            type=click.Choice(["auto", "cpu", "cuda"]),
            default="auto",
            show_default=True,
            help="cuda runs on the gpu queue, cpu on the cpu queue; auto takes a GPU worker when one is live.",
        ),
        click.Option(["--name"], metavar="TEXT", help="A name to find the job by."),
        click.Option(
            ["--max-attempts"], type=int, default=3, show_default=True, help="Runs allowed if workers die mid-job."
        ),
        click.Option(["--timeout"], type=float, metavar="SECONDS", help="Stop the job after this long."),
        click.Option(["--tag"], multiple=True, metavar="KEY=VALUE", help="Label the job; repeatable."),
    ]
    if sweep:
        options += [
            click.Option(["--priority"], type=int, default=0, show_default=True, help="0 to 9 (first; on Redis)."),
            click.Option(
                ["--json", "json_out"], is_flag=True, help='Print {"group": ID, "jobs": [IDS]} (and the leaderboard).'
            ),
            click.Option(
                ["--wait"], is_flag=True, help="Wait for every job, then print the leaderboard; exit 1 unless all do."
            ),
            click.Option(["--metric"], metavar="NAME", help="With --wait: rank by this metric [default: val_acc]."),
            click.Option(
                ["--max-jobs"], type=click.IntRange(min=1), default=100, show_default=True, help="Refuse larger sweeps."
            ),
        ]
        return options
    options.append(click.Option(["--json", "json_out"], is_flag=True, help="Print the job as JSON."))
    if mode == "submit":
        options += [
            click.Option(["--priority"], type=int, default=0, show_default=True, help="0 to 9 (first; on Redis)."),
            click.Option(
                ["--wait"], is_flag=True, help="Wait for the job, with a progress bar; exit 1 unless it succeeds."
            ),
        ]
    return options


def build_spec(state: CliState, task: str, options: dict, field_names: set[str]):
    """A JobSpec from the parsed options of a task command; a bad common value raises BadInput."""
    params = {k: v for k, v in options.items() if k in field_names and v is not None}
    return state.client.make_spec(
        task,
        params,
        backbone=options.get("backbone"),
        weights=options.get("weights"),
        pretrained=options.get("pretrained", True),
        device=options.get("device", "auto"),
        priority=options.get("priority", 0),
        name=options.get("name"),
        max_attempts=options.get("max_attempts", 3),
        timeout=options.get("timeout"),
        tags=parse_tags(options.get("tag", ())),
    )


class TaskCommands(click.Group):
    """A group with one subcommand per installed task, built from the task's parameter model.

    ``mode`` is ``submit`` (queue it), ``run`` (run it here) or ``sweep`` (queue the cross product of
    comma-separated option values).
    """

    def __init__(self, *args, mode: str, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mode = mode

    def _registry(self, ctx: click.Context):
        from tlq.plugins.registry import task_registry

        root = ctx.find_root()
        if not hasattr(root, "_tlq_tasks"):
            root._tlq_tasks = task_registry()
        return root._tlq_tasks

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._registry(ctx).names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tlq.errors import BadInput

        registry = self._registry(ctx)
        if name not in registry.names():
            raise BadInput(registry_error(registry, name))
        plugin = registry.get(name)
        fields = plugin.params.model_fields
        mode = self.mode
        sweep = mode == "sweep"
        params = _common_options(mode, plugin.many_backbones) + [
            option_for_field(n, f, sweep=sweep) for n, f in fields.items() if n not in COMMON
        ]

        @pass_state
        def callback(state: CliState, **options):
            if sweep:
                separators = {n: sweep_separator(f) for n, f in fields.items()} | SWEEPABLE_COMMON
                if plugin.many_backbones:
                    separators.pop("backbone")
                return _sweep(state, name, options, separators)
            spec = build_spec(state, name, options, set(fields))
            if mode == "submit":
                return _submit(state, spec, options["wait"], options["json_out"])
            return _run_here(state, spec, options["json_out"])

        summary = plugin.summary
        if sweep:
            summary = (
                f"Sweep {name}: several values of any option are crossed into one group of jobs. Separate "
                "numbers, choices and backbones with ',' (--lr 1e-3,1e-4) and text, paths and lists with ';'."
            )
        return click.Command(name, params=params, callback=callback, help=summary, short_help=plugin.summary)


def registry_error(registry, name: str) -> str:
    from tlq.plugins.registry import unknown_name_message

    return unknown_name_message("task", name, registry.names(), "tlq tasks")


def _submit(state: CliState, spec, wait: bool, json_out: bool) -> int:
    return _follow(state, state.client.queue(spec), wait, json_out)


def _follow(state: CliState, job_id: int, wait: bool, json_out: bool) -> int:
    if wait:
        from tlq.cli.jobs import wait_for_job

        code = wait_for_job(state, job_id, timeout=None, quiet=json_out)
        emit_job(state, job_id, json_out, brief=not json_out)
        return code
    if json_out:
        emit_job(state, job_id, True)
    else:
        click.echo(job_id)
    return 0


SWEEPABLE_COMMON = {"backbone": ",", "weights": ";"}
NOT_SWEPT = {"wait", "json_out", "max_jobs", "metric", "tag", "name"}


def split_sweep_options(options: dict, separators: dict[str, str]) -> tuple[dict[str, list[str]], dict]:
    """The swept options (two or more values) and the fixed ones, from a sweep command's options.

    Numbers, choices and backbones are separated by commas (``--lr 1e-3,1e-4``); text, paths and lists by
    ``;`` (``--target 'tabby, tabby cat;Siamese cat'``, ``--eps 1/255,2/255;4/255,8/255``). Repeated values
    (``1e-3,0.001``) count once.
    """
    grid: dict[str, list[str]] = {}
    fixed: dict = {}
    for key, value in options.items():
        if key in NOT_SWEPT or value is None:
            continue
        if isinstance(value, str) and key in separators:
            values = _unique(v.strip() for v in value.split(separators[key]) if v.strip())
            if len(values) > 1:
                grid[key] = values
                continue
            value = values[0] if values else value
        fixed[key] = value
    return grid, fixed


def _unique(values) -> list[str]:
    """Values in order, a repeated one (as text, or as the number it spells) left out."""
    seen, kept = set(), []
    for value in values:
        try:
            key = float(value)
        except ValueError:
            key = value
        if key not in seen:
            seen.add(key)
            kept.append(value)
    return kept


def _sweep(state: CliState, task: str, options: dict, separators: dict[str, str]) -> int:
    from tlq.cli.output import print_json
    from tlq.errors import BadInput

    grid, fixed = split_sweep_options(options, separators)
    fixed["tags"] = parse_tags(options.get("tag", ()))
    result = state.client.sweep(task, grid, name=options.get("name"), max_jobs=options["max_jobs"], **fixed)
    jobs = result["jobs"]
    axes = " x ".join(f"{k} ({len(v)})" for k, v in grid.items()) or "no swept option"
    if not options["json_out"]:
        click.echo(result["group"])
        click.echo(
            f"queued {len(jobs)} jobs ({jobs[0]}-{jobs[-1]}) as group {result['group']}: {axes}; "
            f"`tlq compare {result['group']}` ranks them",
            err=True,
        )
    if not options["wait"]:
        if options["json_out"]:
            print_json(result)
        return 0
    from tlq.cli.jobs import wait_for_jobs
    from tlq.cli.results import print_leaderboard

    code = wait_for_jobs(state, jobs, quiet=options["json_out"])
    try:
        rows = state.client.compare(group=result["group"], metric=options.get("metric"))
    except BadInput as exc:  # no job recorded the metric (they all failed, say): the jobs say why
        rows = []
        click.echo(f"no leaderboard: {exc}; `tlq jobs --group {result['group']}` shows the jobs", err=True)
    if options["json_out"]:
        print_json(result | {"leaderboard": rows})
    elif rows:
        metric = options.get("metric") or state.client.default_metric(jobs)
        print_leaderboard(state.client, rows, metric, f"group {result['group']}")
    return code


def _run_here(state: CliState, spec, json_out: bool) -> int:
    from tlq.cli.progress import JobProgress

    with JobProgress(disable=json_out) as bar:
        job_id = state.client.run_spec(spec, on_progress=bar.update)
    status = emit_job(state, job_id, json_out, brief=not json_out)
    return 0 if status == "succeeded" else 1


@click.group(cls=TaskCommands, mode="submit")
def submit() -> None:
    """Queue a job for a worker: tlq submit TASK --backbone NAME [options]. `tlq tasks` lists the tasks."""


@click.group(cls=TaskCommands, mode="run")
def run() -> None:
    """Run a job in this process, with no worker or broker; it records the same rows as a queued job."""


@click.group(cls=TaskCommands, mode="sweep")
def sweep() -> None:
    """Queue a sweep: the cross product of several values of options, as one group of jobs.

    Numbers, choices and backbones are separated by ',', text, paths and lists by ';'.

    \b
      tlq sweep finetune --backbone vgg16,resnet50 --lr 1e-3,1e-4 --data ./pets
      tlq sweep adversarial --backbone job:12 --data ./val --eps '1/255,2/255;4/255,8/255'
      tlq compare GROUP        # the leaderboard
    """


@click.command()
@click.argument("job_id", type=JOB_ID, shell_complete=complete_job_id)
@click.option("--wait", is_flag=True, help="Wait for the new job; exit 1 unless it succeeds.")
@click.option("--json", "json_out", is_flag=True, help="Print the new job as JSON.")
@pass_state
def retry(state: CliState, job_id: int, wait: bool, json_out: bool) -> int:
    """Submit a new job with the same spec as JOB_ID."""
    new_id = state.client.retry(job_id)
    return _follow(state, new_id, wait, json_out)
