"""`tlq backbones`, `tlq layers` and `tlq tasks`: what the installed plugins offer."""

from __future__ import annotations

import click

from tlq.cli.completion import complete_backbone
from tlq.cli.output import print_json
from tlq.cli.state import CliState, pass_state


@click.command()
@click.option(
    "--filter", "pattern", metavar="PATTERN", help="fnmatch pattern, such as 'convnext_tiny.*', 'vgg*' or 'job:*'."
)
@click.option(
    "--architectures",
    is_flag=True,
    help="List bare timm architectures (resnet50), not pretrained tags (resnet50.a1_in1k).",
)
@click.option("--json", "json_out", is_flag=True, help="Print a list of {name, source, description}.")
@pass_state
def backbones(state: CliState, pattern: str | None, architectures: bool, json_out: bool) -> None:
    """List backbones: timm's pretrained tags, and models fine-tuned by earlier jobs (job:ID).

    A tag marked "default" is what its bare architecture loads (--backbone resnet50 is resnet50.a1_in1k).

    \b
    Any of them goes to --backbone, and so do timm model folders:
      local-dir:PATH     a folder with config.json and model.safetensors (`tlq export hf` writes one)
      hf-hub:ORG/NAME    a timm model on the Hugging Face Hub
    """
    from tlq.plugins.registry import backbone_providers

    providers = backbone_providers()
    rows = []
    if architectures:
        rows = providers.get("timm").architectures(pattern)
    else:
        for scheme in providers.names():
            rows.extend(providers.get(scheme).list(pattern, state.env))
    if json_out:
        print_json(rows)
        return
    if not rows:
        click.echo(no_match_hint(providers, pattern, architectures))
        return
    for row in rows:
        extra = f"  ({row['description']})" if row.get("description") else ""
        click.echo(f"{row['name']}{extra}")


def no_match_hint(providers, pattern: str | None, architectures: bool) -> str:
    """What to try when nothing matched: bare architectures that match, or a wider pattern."""
    if not architectures and pattern:
        bare = providers.get("timm").architectures(pattern)
        if bare:
            wider = "" if pattern.endswith("*") else f", or try --filter '{pattern}*'"
            return (
                f"no pretrained tag matches {pattern!r}, but {len(bare)} architecture(s) do "
                f"(`tlq backbones --architectures --filter '{pattern}'`): use them with --no-pretrained or "
                f"--weights FILE{wider}"
            )
    return f"no backbone matches {pattern!r}; try a wider pattern such as 'res*'"


@click.command()
@click.argument("backbone", shell_complete=complete_backbone)
@click.option("--json", "json_out", is_flag=True, help="Print a list of {index, from_end, name, channels, reduction}.")
@pass_state
def layers(state: CliState, backbone: str, json_out: bool) -> None:
    """List the layers of BACKBONE that `tlq submit feature-maps --layer` can name (timm's feature_info).

    The model is built without weights (nothing is downloaded); a job:ID model is read from its model card.
    """
    from tlq.ml.feature_maps import backbone_layers
    from tlq.plugins.backbone import BackboneRef, provider_for

    ref = BackboneRef(backbone.strip(), pretrained=False)
    provider_for(ref.name, state.env.backbones).check(ref, state.env)
    _, found = backbone_layers(ref, state.env, load=True)
    if json_out:
        print_json([layer.as_dict() for layer in found])
        return
    click.echo(f"{'index':>5} {'from end':>8}  {'name':<24} {'channels':>8} {'reduction':>9}")
    for layer in found:
        click.echo(f"{layer.index:>5} {layer.from_end:>8}  {layer.name:<24} {layer.channels:>8} {layer.reduction:>9}")


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
                "many_backbones": plugin.many_backbones,  # --backbone a,b,c
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
