"""`tlq backbones` and `tlq tasks`: what the installed plugins offer."""

from __future__ import annotations

import click

from tlq.cli.output import print_json
from tlq.cli.state import CliState, pass_state


@click.command()
@click.option("--filter", "pattern", metavar="PATTERN", help="fnmatch pattern, such as 'vgg*' or 'job:*'.")
@click.option("--json", "json_out", is_flag=True, help="Print a list of {name, source, description}.")
@pass_state
def backbones(state: CliState, pattern: str | None, json_out: bool) -> None:
    """List backbones: every timm model, and models fine-tuned by earlier jobs (job:ID)."""
    from tlq.plugins.registry import backbone_providers

    providers = backbone_providers()
    rows = []
    for scheme in providers.names():
        rows.extend(providers.get(scheme).list(pattern, state.env))
    if json_out:
        print_json(rows)
        return
    if not rows:
        click.echo(f"no backbone matches {pattern!r}; try a wider pattern such as 'res*'")
        return
    for row in rows:
        extra = f"  ({row['description']})" if row.get("description") else ""
        click.echo(f"{row['name']}{extra}")


@click.command()
@click.option("--json", "json_out", is_flag=True, help="Print tasks with their parameters.")
def tasks(json_out: bool) -> None:
    """List tasks and their parameters."""
    from tlq.cli.options import describe_params
    from tlq.plugins.registry import task_registry

    registry = task_registry()
    data = []
    for name in registry.names():
        plugin = registry.get(name)
        data.append(
            {
                "name": name,
                "summary": plugin.summary,
                "needs_backbone": plugin.needs_backbone,
                "headline": plugin.headline,
                "headline_goal": plugin.headline_goal,
                "params": describe_params(plugin.params),
            }
        )
    if json_out:
        print_json(data)
        return
    for task in data:
        click.echo(click.style(task["name"], bold=True) + f"  {task['summary']}")
        if task["headline"]:
            better = "higher" if task["headline_goal"] == "max" else "lower"
            click.echo(f"    ranked by {task['headline']} ({better} is better)")
        for p in task["params"]:
            default = (
                " (required)" if p["required"] else (f" [default: {p['default']}]" if p["default"] is not None else "")
            )
            click.echo(f"    {p['flag']:<22} {p['type']:<14} {p['help']}{default}")
