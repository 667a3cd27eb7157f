"""The ``caliber`` command: parse, call one library function, render.

Every command lives in the module of its group (``workflow``, ``queue``, ``pinion``,
``results``); rendering helpers are in :mod:`caliber.cli.render`. Errors from the library
(:class:`caliber.errors.CaliberError`) and usage errors become one line on stderr and an exit
code: 2 for bad input or usage, 1 for a failed workflow or an unusable queue. ``--verbose``
adds Caliber's debug log lines (the standard :mod:`logging` module, logger ``caliber``) and,
under an error's line, its causes.
"""

from __future__ import annotations

import sys
from importlib import import_module
from typing import Any

import click

from caliber import __version__
from caliber.cli.common import error_line

# The command groups, imported only when used, so that ``caliber queue list`` does not pay for
# the other groups. Their one-line help is here for ``caliber --help`` (a test keeps it equal
# to each group's own).
GROUPS = {
    "dashboard": "Show the queue, workloads and results in the browser, updating by itself.",
    "pinion": "Start a pinion, the worker that runs queued workloads.",
    "queue": "Look at and manage the queue: list, view, wait, cancel, retry, reset, "
             "resetsecret.",
    "results": "List and show stored Results: every task's return value, the global data g, "
               "the error.",
    "workflow": "Show, run and queue workflow files (JSON files exported with Workflow.export).",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(GROUPS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in GROUPS:
            return None
        command: click.Command = getattr(import_module(f"caliber.cli.{cmd_name}"), cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl(sorted(GROUPS.items()))


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: caliber workflow queue pasta.json -p mypinion && caliber pinion init mypinion",
)
@click.version_option(__version__, "--version", "-V", prog_name="caliber")
@click.option("-v", "--verbose", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, param, value: set_verbose(True) if value else None,
              help="Show debug lines and, under an error, its causes (the exception chain).")
def cli() -> None:
    """Caliber: queue workflows of plain Python functions, run them with a pinion, keep every
    result."""


_handler: Any = None  # the --verbose handler, made (and logging imported) only when asked for


def set_verbose(on: bool) -> None:
    """Show (or stop showing) the ``caliber`` logger's debug records on stderr."""
    global _handler
    if not on and _handler is None:
        return  # logging was never set up: nothing to undo (and ``queue list`` stays light)
    import logging

    class DebugHandler(logging.StreamHandler):  # type: ignore[type-arg]
        """``caliber --verbose``: Caliber's log records on stderr, except those a pinion's
        own progress handler shows (:mod:`caliber.pinion.progress`)."""

        def filter(self, record: logging.LogRecord) -> bool:
            return not hasattr(record, "caliber_reporter") and super().filter(record)

    if _handler is None:
        _handler = DebugHandler(sys.stderr)
        _handler.setFormatter(logging.Formatter("caliber: %(levelname)s: %(name)s: %(message)s"))
    logger = logging.getLogger("caliber")
    if on:
        _handler.setStream(sys.stderr)
        logger.addHandler(_handler)
        logger.setLevel(logging.DEBUG)
    else:
        logger.removeHandler(_handler)
        logger.setLevel(logging.NOTSET)


def verbose() -> bool:
    if _handler is None:
        return False
    import logging

    return _handler in logging.getLogger("caliber").handlers


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m caliber``."""
    from caliber.errors import CaliberError

    set_verbose(False)
    try:
        code = cli.main(args=argv, prog_name="caliber", standalone_mode=False)
    except click.exceptions.Abort as exc:  # click's form of Ctrl-C (and of EOF at a prompt)
        error_line("interrupted" if isinstance(exc.__cause__, KeyboardInterrupt) else "aborted")
        code = 130
    except click.exceptions.NoArgsIsHelpError as exc:  # ``caliber``, ``caliber queue``: the help
        exc.show()
        code = 2
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error_line(f"{exc.format_message()}{hint}")
        code = 2
    except click.ClickException as exc:
        error_line(exc.format_message())
        code = exc.exit_code
    except CaliberError as exc:
        error_line(str(exc))
        if verbose():  # the causes, under the one line
            import traceback

            sys.stderr.write("".join(traceback.format_exception(exc)))
        code = exc.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        code = 130
    except BrokenPipeError:  # the reader went away (``| head``): a quiet end
        from caliber.cli.common import quiet_stdout

        quiet_stdout()
        code = 0
    finally:
        set_verbose(False)
    sys.exit(code if isinstance(code, int) else 0)
