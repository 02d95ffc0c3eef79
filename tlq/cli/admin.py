"""`tlq config` (what is in force, passwords masked) and `tlq db upgrade`."""

from __future__ import annotations

import click

from tlq.cli.output import print_json
from tlq.cli.state import CliState, pass_state


@click.command()
@click.option("--json", "json_out", is_flag=True, help="Print as JSON.")
@pass_state
def config(state: CliState, json_out: bool) -> None:
    """Print the settings in force and where each came from; passwords are masked."""
    described = state.settings.describe()
    if json_out:
        print_json(described)
        return
    width = max(map(len, described))
    for key, item in described.items():
        click.echo(f"{key:<{width}} {item['value']}  ({item['source']})")


@click.group()
def db() -> None:
    """Manage the job database schema."""


@db.command()
@pass_state
def upgrade(state: CliState) -> None:
    """Apply pending migrations (they also run on first use)."""
    from tlq.db.engine import DatabaseUnavailable, current_revision, head_revision
    from tlq.db.engine import upgrade as run_upgrade

    database = state.env.db
    try:
        applied = run_upgrade(database.engine)
        revision = current_revision(database.engine)
    except Exception as exc:
        if "OperationalError" in type(exc).__name__:
            raise DatabaseUnavailable(
                f"cannot reach the database at {database.masked_url} ({exc.__class__.__name__}); "
                "start it, or point TLQ_DATABASE_URL / --database-url at one that runs"
            ) from exc
        raise
    message = "upgraded to" if applied else "already at"
    click.echo(f"{database.masked_url}: {message} revision {revision} (head {head_revision()})")
