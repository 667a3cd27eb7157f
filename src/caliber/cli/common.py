"""Options and helpers shared by the command groups."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def error_line(message: str) -> None:
    """One line on stderr: ``caliber: error: ...``."""
    text = " ".join(str(message).split())
    click.echo(f"caliber: error: {text}", err=True)


def print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def remote_options(f: F) -> F:
    """``--project``, ``--model`` and ``--local``: which queue a command works on."""
    f = click.option(
        "--local", is_flag=True, help="Use the local queue even when a Speckle project is set."
    )(f)
    f = click.option(
        "--model", envvar="CALIBER_SPECKLE_MODEL", show_envvar=True,
        help="Speckle model of the remote queue (default: main; made if missing).",
    )(f)
    f = click.option(
        "--project", envvar="CALIBER_SPECKLE_PROJECT", show_envvar=True,
        help="Speckle project id: use the remote queue on that project (also read from "
        ".caliber/.env; the server is CALIBER_SPECKLE_HOST, see docs/remote-queue.md).",
    )(f)
    return f
