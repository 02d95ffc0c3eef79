"""The root `tlq` command: settings flags, lazily loaded subcommands, and one-line errors."""

from __future__ import annotations

import importlib
import sys

import click

from tlq import __version__
from tlq.cli.state import CliState

SUBCOMMANDS = {
    "submit": "tlq.cli.submit:submit",
    "run": "tlq.cli.submit:run",
    "sweep": "tlq.cli.submit:sweep",
    "retry": "tlq.cli.submit:retry",
    "jobs": "tlq.cli.jobs:jobs",
    "show": "tlq.cli.jobs:show",
    "wait": "tlq.cli.jobs:wait",
    "cancel": "tlq.cli.jobs:cancel",
    "results": "tlq.cli.results:results",
    "compare": "tlq.cli.results:compare",
    "metrics": "tlq.cli.results:metrics",
    "plot": "tlq.cli.results:plot",
    "artifacts": "tlq.cli.results:artifacts",
    "worker": "tlq.cli.workers:worker",
    "workers": "tlq.cli.workers:workers",
    "backbones": "tlq.cli.plugins:backbones",
    "layers": "tlq.cli.plugins:layers",
    "tasks": "tlq.cli.plugins:tasks",
    "config": "tlq.cli.admin:config",
    "db": "tlq.cli.admin:db",
    "ui": "tlq.cli.ui:ui",
    "export": "tlq.cli.export:export",
}


class RootGroup(click.Group):
    """Loads subcommand modules on demand and turns every known error into one line on stderr."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(name)
        if target is None:
            return None
        module, attr = target.split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        try:
            return super().resolve_command(ctx, args)
        except click.exceptions.NoSuchCommand as exc:
            # Click suggests from the commands it holds, and this group loads them only by name: suggest from
            # the names (`tlq sbumit`: "Did you mean 'submit'?").
            raise click.exceptions.NoSuchCommand(exc.command_name, possibilities=SUBCOMMANDS, ctx=ctx) from None

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        from tlq.cli.errors import run_with_error_handling

        code = run_with_error_handling(
            lambda: super(RootGroup, self).main(args, prog_name, complete_var, standalone_mode=False, **extra)
        )
        if standalone_mode:
            sys.exit(code)
        return code


@click.group(cls=RootGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.option("--home", metavar="DIR", help="Where tlq keeps its files [env TLQ_HOME; default ~/.tlq].")
@click.option("--database-url", metavar="URL", help="Job database [env TLQ_DATABASE_URL; default SQLite in TLQ_HOME].")
@click.option(
    "--broker-url", metavar="URL", help="Celery broker [env TLQ_BROKER_URL; default SQLite in TLQ_HOME, no server]."
)
@click.option("--artifacts-dir", metavar="DIR", help="Job outputs [env TLQ_ARTIFACTS_DIR; default TLQ_HOME/artifacts].")
@click.version_option(__version__, prog_name="tlq")
@click.pass_context
def cli(ctx: click.Context, home, database_url, broker_url, artifacts_dir) -> None:
    """tlq: transfer-learning jobs on a queue.

    Fine-tune a backbone, extract features, render ideal images and craft adversarial examples as queued,
    tracked, reproducible jobs. With no settings, everything lives in ~/.tlq and no server is needed.

    \b
      tlq worker &
      tlq submit feature-extract --backbone resnet18 --data ./photos --wait
      tlq jobs
      tlq show 1 --json
    """
    ctx.obj = CliState.from_flags(home, database_url, broker_url, artifacts_dir)


def main() -> None:
    cli.main(prog_name="tlq")
