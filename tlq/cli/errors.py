"""One line on stderr for every error a user can cause or meet, and the exit code that goes with it.

Exit codes: 0 success, 1 a job or service failed, 2 bad input (nothing was queued), 130 interrupted.
"""

from __future__ import annotations

from collections.abc import Callable

import click


def _hint(exc: click.UsageError) -> str:
    ctx = exc.ctx
    if ctx is None:
        return ""
    return f" (see `{ctx.command_path} --help`)"


def run_with_error_handling(call: Callable[[], object]) -> int:
    try:
        result = call()
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        click.echo(f"Error: {exc.format_message()}{_hint(exc)}", err=True)
        return 2
    except click.ClickException as exc:
        click.echo(f"Error: {exc.format_message()}", err=True)
        return exc.exit_code
    except click.Abort:
        click.echo("Aborted.", err=True)
        return 1
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    except Exception as exc:
        # Imported only now: `tlq --help` (and a command that succeeds) loads neither pydantic-settings nor SQLAlchemy.
        from tlq.config import SettingsError
        from tlq.db.engine import DatabaseUnavailable
        from tlq.db.filters import FilterError
        from tlq.errors import BadInput
        from tlq.jobs.submit import BrokerUnavailable

        if isinstance(exc, BadInput | FilterError | SettingsError):
            click.echo(f"Error: {exc}", err=True)
            return 2
        if isinstance(exc, DatabaseUnavailable | BrokerUnavailable):
            click.echo(f"Error: {exc}", err=True)
            return 1
        raise
    return result if isinstance(result, int) else 0
