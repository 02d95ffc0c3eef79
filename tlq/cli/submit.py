"""`tlq submit TASK`, `tlq run TASK` and `tlq retry ID`.

Each installed task becomes a subcommand whose options come from its parameter model; the options every
job shares (backbone, device, priority, ...) are added here once.
"""

from __future__ import annotations

import click
from pydantic import ValidationError

from tlq.cli.options import option_for_field
from tlq.cli.output import emit_job
from tlq.cli.state import CliState, pass_state

COMMON = {"backbone", "weights", "pretrained", "device", "priority", "name", "max_attempts", "timeout", "tag"}
OUTPUT = {"wait", "json_out"}


def _common_options(queued: bool) -> list[click.Option]:
    options = [
        click.Option(["--backbone"], metavar="NAME", help="timm model name (resnet18, vgg16, ...) or job:ID."),
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
        click.Option(["--json", "json_out"], is_flag=True, help="Print the job as JSON."),
    ]
    if queued:
        options += [
            click.Option(["--priority"], type=int, default=0, show_default=True, help="0 (default) to 9 (first)."),
            click.Option(
                ["--wait"], is_flag=True, help="Wait for the job, with a progress bar; exit 1 unless it succeeds."
            ),
        ]
    return options


def _parse_tags(tags: tuple[str, ...]) -> dict[str, str]:
    from tlq.plugins.errors import BadInput

    parsed = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key.strip():
            raise BadInput(f"--tag {tag!r} is not KEY=VALUE; write it as --tag dataset=pets")
        parsed[key.strip()] = value.strip()
    return parsed


def build_spec(task: str, options: dict, field_names: set[str]):
    """A JobSpec from the parsed options of a task command; a bad common value raises BadInput."""
    from tlq.plugins.errors import BadInput
    from tlq.plugins.spec import JobSpec, describe_validation_error

    params = {k: v for k, v in options.items() if k in field_names and v is not None}
    try:
        return JobSpec(
            task=task,
            backbone=options.get("backbone"),
            weights=options.get("weights"),
            pretrained=options.get("pretrained", True),
            device=options.get("device", "auto"),
            priority=options.get("priority", 0),
            name=options.get("name"),
            max_attempts=options.get("max_attempts", 3),
            timeout=options.get("timeout"),
            tags=_parse_tags(options.get("tag", ())),
            params=params,
        )
    except ValidationError as exc:
        raise BadInput(describe_validation_error(exc)) from exc


class TaskCommands(click.Group):
    """A group with one subcommand per installed task, built from the task's parameter model."""

    def __init__(self, *args, queued: bool, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.queued = queued

    def _registry(self, ctx: click.Context):
        from tlq.plugins.registry import task_registry

        root = ctx.find_root()
        if not hasattr(root, "_tlq_tasks"):
            root._tlq_tasks = task_registry()
        return root._tlq_tasks

    def list_commands(self, ctx: click.Context) -> list[str]:
        return self._registry(ctx).names()

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from tlq.plugins.errors import BadInput

        registry = self._registry(ctx)
        if name not in registry.names():
            raise BadInput(registry_error(registry, name))
        plugin = registry.get(name)
        fields = plugin.params.model_fields
        params = _common_options(self.queued) + [option_for_field(n, f) for n, f in fields.items() if n not in COMMON]
        queued = self.queued

        @pass_state
        def callback(state: CliState, **options):
            spec = build_spec(name, options, set(fields))
            if queued:
                return _submit(state, spec, options["wait"], options["json_out"])
            return _run_here(state, spec, options["json_out"])

        return click.Command(name, params=params, callback=callback, help=plugin.summary, short_help=plugin.summary)


def registry_error(registry, name: str) -> str:
    from tlq.plugins.registry import unknown_name_message

    return unknown_name_message("task", name, registry.names(), "tlq tasks")


def _submit(state: CliState, spec, wait: bool, json_out: bool) -> int:
    from tlq.workers.dispatch import submit as submit_job

    job_id = submit_job(state.env, spec)
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


def _run_here(state: CliState, spec, json_out: bool) -> int:
    from tlq.cli.progress import JobProgress
    from tlq.workers.dispatch import run_here

    with JobProgress(disable=json_out) as bar:
        job_id = run_here(state.env, spec, on_progress=bar.update)
    status = emit_job(state, job_id, json_out, brief=not json_out)
    return 0 if status == "succeeded" else 1


@click.group(cls=TaskCommands, queued=True)
def submit() -> None:
    """Queue a job for a worker: tlq submit TASK --backbone NAME [options]. `tlq tasks` lists the tasks."""


@click.group(cls=TaskCommands, queued=False)
def run() -> None:
    """Run a job in this process, with no worker or broker; it records the same rows as a queued job."""


@click.command()
@click.argument("job_id", type=int)
@click.option("--wait", is_flag=True, help="Wait for the new job; exit 1 unless it succeeds.")
@click.option("--json", "json_out", is_flag=True, help="Print the new job as JSON.")
@pass_state
def retry(state: CliState, job_id: int, wait: bool, json_out: bool) -> int:
    """Submit a new job with the same spec as JOB_ID."""
    from tlq.cli.jobs import load_job
    from tlq.workers.dispatch import spec_of_job

    job = load_job(state, job_id)
    return _submit(state, spec_of_job(job), wait, json_out)
