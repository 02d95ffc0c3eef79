"""`tlq ui`: the web dashboard (``tlq.ui``), served with uvicorn on this machine's loopback by default."""

from __future__ import annotations

import socket

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

    sockets = listen(host, port)  # before the URL is printed: a port in use is one line, not a dead URL
    state.env.db.ensure_schema()
    app = create_app(state.settings, token=token or "")
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    click.echo(f"tlq ui: serving {url} (Ctrl-C stops it)")
    if token:
        click.echo(f"log in once with {url}login?token=$TLQ_UI_TOKEN (or send Authorization: Bearer $TLQ_UI_TOKEN)")
    # No access log: it would write every URL, /login?token=... included, to the terminal.
    uvicorn.Server(uvicorn.Config(app, access_log=False, log_level="warning")).run(sockets=sockets)


def listen(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` on ``port`` (``::`` takes IPv4 as well as IPv6, as "every
    address" means), for uvicorn to serve on.

    Raises:
        BadInput: The port is in use, or ``host`` is no address of this machine; the message names the fix.
    """
    import errno

    from tlq.errors import BadInput

    name = host.strip("[]")
    try:
        found = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BadInput(f"--host {host}: {exc.strerror}; give an address of this machine, such as 127.0.0.1") from None
    sockets: list[socket.socket] = []
    for family, kind, proto, _, address in found:
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if address[0] == "::" else 1)
        try:
            sock.bind(address)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRNOTAVAIL and len(found) > 1:
                continue  # ::1 of "localhost" where IPv6 is off: its IPv4 address serves
            for bound in sockets:
                bound.close()
            if exc.errno == errno.EADDRINUSE:
                raise BadInput(
                    f"port {port} on {host} is in use (another tlq ui?); stop that one, or pick another port: "
                    f"tlq ui --port {port + 1 if port < 65535 else 8765}"
                ) from None
            raise BadInput(
                f"cannot listen on {host} port {port} ({exc.strerror}); give another --host or --port"
            ) from None
        sockets.append(sock)
    if not sockets:
        raise BadInput(f"--host {host} has no address this machine can listen on; give one such as 127.0.0.1")
    return sockets
