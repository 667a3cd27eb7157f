"""``caliber dashboard``: the queue, its workloads and their Results in the browser."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from caliber.cli.common import target_options

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget

DEFAULT_PORT = 8765
TOKEN_ENV = "CALIBER_DASHBOARD_TOKEN"


@click.command(short_help="Show the queue, workloads and results in the browser, updating by "
                          "itself.", epilog="""\b
Examples:
  caliber dashboard                 # then open the address it prints
  caliber dashboard --open          # and start a browser on it
  caliber dashboard --host 0.0.0.0   # for others: give them the token""")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (another than this machine's own: give the token to "
                   "whom you trust).")
@click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
              help="Port to listen on.")
@click.option("--open", "open_browser", is_flag=True, help="Open the dashboard in a browser.")
@click.option("--token",
              help=f"The token every request needs (default: {TOKEN_ENV}, else a new random "
                   "one, printed).")
@target_options
def dashboard(host: str, port: int, open_browser: bool, token: str | None,
              target: QueueTarget) -> None:
    """Show the queue, each workload (its workflow drawn, progress, output, history) and its
    Results (values, plots, files) in the browser, updating by itself; cancel and retry
    from there. Needs the dashboard extra (docs/dashboard.md)."""
    import secrets
    import socket

    from caliber.errors import ConfigError, UsageError

    try:
        import uvicorn

        from caliber.dashboard.app import make_app
    except ImportError as exc:
        raise ConfigError(f"the dashboard needs {exc.name}: pip install '.[dashboard]' in "
                          "Caliber's folder (or its wheel with [dashboard])") from None
    if token is None:
        from caliber.settings import load_settings

        setting = load_settings().dashboard_token
        token = setting.get_secret_value() if setting is not None else None
    if token is not None and len(token) < 16:
        raise UsageError(f"{TOKEN_ENV} / --token: at least 16 characters, to be hard to guess")
    token = token or secrets.token_urlsafe(24)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror or exc} "
                         "(another port: --port)") from None
    shown = f"[{host}]" if ":" in host else host
    address = f"http://{shown}:{port}/?token={token}"
    click.echo(f"Caliber dashboard of {target.location}: {address}")
    click.echo("(Ctrl-C stops it)")
    if open_browser:
        import webbrowser

        webbrowser.open(address)
    config = uvicorn.Config(make_app(target, token=token), log_level="warning",
                            access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    import contextlib

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a dashboard ends
        server.run(sockets=[listener])
    click.echo("dashboard stopped")
