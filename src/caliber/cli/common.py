"""Options and helpers shared by the command groups."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from caliber.settings import MAX_COUNT, Bounds

F = TypeVar("F", bound=Callable[..., Any])

PAGE = Bounds(1, MAX_COUNT, whole=True)
"""How many a listing shows at most (``-n``); ``--all`` shows every one."""
OFFSET = Bounds(0, 1_000_000_000, whole=True)
"""How many first a listing skips (``--offset``)."""


class Bounded(click.FloatRange):
    """A number within ``bounds`` (:class:`caliber.settings.Bounds`): an option that is a
    setting's twin takes that setting's bounds, and says the same when a value is outside
    them; never nan, inf or a number too large to use (``--lease 1e17``)."""

    def __init__(self, bounds: Bounds) -> None:
        super().__init__(min=bounds.low, max=bounds.high, min_open=bounds.above)
        self.bounds = bounds
        self.name = "integer range" if bounds.whole else "float range"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        try:
            return self.bounds.check(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def error_line(message: str) -> None:
    """One line on stderr: ``caliber: error: ...``."""
    from caliber.text import for_terminal

    text = for_terminal(" ".join(str(message).split()))
    click.echo(f"caliber: error: {text}", err=True)


def quiet_stdout() -> None:
    """After a broken pipe (the reader went away, as ``| head`` does): point stdout at the
    null device, so that flushing it at exit writes nothing (Python would print an error)."""
    import os
    import sys

    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (OSError, ValueError):
        pass


def print_json(value: Any) -> None:
    """``value`` as JSON; characters a terminal would obey are written as ``\\u`` escapes."""
    from caliber.text import json_for_terminal

    click.echo(json_for_terminal(json.dumps(value, indent=2, ensure_ascii=False, default=str)))


def json_option(f: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(f)


def target_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--queue``, ``--project``, ``--model`` and ``--local``: which queue a command works
    on, resolved once (:func:`caliber.queue.target.resolve_target`) and given to the command
    as ``target``. A value that came from the environment counts as a setting, not as an
    option given: ``--project`` on the command line wins over ``CALIBER_QUEUE_URL``, and
    ``CALIBER_QUEUE_URL`` over ``CALIBER_SPECKLE_PROJECT``."""

    @functools.wraps(f)
    def command(*args: Any, queue: str | None, project: str | None, model: str | None,
                local: bool, **kwargs: Any) -> Any:
        from caliber.queue.target import resolve_target

        target = resolve_target(queue=given("queue", queue), project=given("project", project),
                                model=given("model", model), local=local, queue_from="--queue")
        return f(*args, target=target, **kwargs)

    options = [
        click.option("--local", is_flag=True,
                     help="Use the local queue even when a queue URL or a Speckle project is "
                     "set."),
        click.option(
            "--model", envvar="CALIBER_SPECKLE_MODEL", show_envvar=True,
            help="Speckle model of the remote queue (default: main; made if missing).",
        ),
        click.option(
            "--project", envvar="CALIBER_SPECKLE_PROJECT", show_envvar=True,
            help="Speckle project id: use the remote queue on that project (also read from "
            ".caliber/.env; the server is CALIBER_SPECKLE_HOST, see docs/remote-queue.md).",
        ),
        click.option(
            "--queue", "queue", metavar="URL", envvar="CALIBER_QUEUE_URL", show_envvar=True,
            help="The queue, as a URL: sqlite:///path/caliber.db, postgresql://user@host/db, "
            "speckle://host/PROJECT/MODEL or memory://NAME (see docs/queue.md).",
        ),
    ]
    decorated: Callable[..., Any] = command
    for option in options:
        decorated = option(decorated)
    return decorated


def given(name: str, value: Any, context: click.Context | None = None) -> Any:
    """``value`` when option ``name`` was given on the command line, None when click took it
    from the environment (the settings read that themselves, in their own order)."""
    from click.core import ParameterSource

    context = context or click.get_current_context(silent=True)
    if context is None or context.get_parameter_source(name) != ParameterSource.ENVIRONMENT:
        return value
    return None
