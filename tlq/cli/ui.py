"""`tlq ui`: the web dashboard (``tlq.ui``), served with uvicorn on this machine's loopback by default."""

from __future__ import annotations

import click

from tlq.cli.state import CliState, pass_state


@click.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to bind; any but this machine's own (127.0.0.1, localhost, ::1) needs TLQ_UI_TOKEN set.",
)
@click.option("--port", type=click.IntRange(1, 65535), default=8765, show_default=True, help="Port to listen on.")
@pass_state
def ui(state: CliState, host: str, port: int) -> None:
    """Serve the dashboard: jobs, their curves, images and logs, groups, workers (Ctrl-C stops it).

    \b
      tlq ui                                          # http://127.0.0.1:8765
      TLQ_UI_TOKEN=$(openssl rand -hex 24) tlq ui --host 0.0.0.0

    With TLQ_UI_TOKEN set, every page and API call needs it: open /login?token=TOKEN once (it sets a cookie), or
    send Authorization: Bearer TOKEN.
    """
    from tlq.errors import BadInput
    from tlq.ui.security import is_local, token_from_environment

    token = token_from_environment()
    if not is_local(host) and token is None:
        raise BadInput(
            f"--host {host} would serve the dashboard beyond this machine without a token; "
            "set TLQ_UI_TOKEN (openssl rand -hex 24) or bind --host 127.0.0.1"
        )
    import uvicorn

    from tlq.ui.app import create_app

    state.env.db.ensure_schema()
    app = create_app(state.settings, token=token or "")
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    click.echo(f"tlq ui: serving {url} (Ctrl-C stops it)")
    if token:
        click.echo(f"log in once with {url}login?token=$TLQ_UI_TOKEN (or send Authorization: Bearer $TLQ_UI_TOKEN)")
    # No access log: it would write every URL, /login?token=... included, to the terminal.
    uvicorn.run(app, host=host.strip("[]"), port=port, access_log=False, log_level="warning")
