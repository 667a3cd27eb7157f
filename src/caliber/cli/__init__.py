"""The ``caliber`` command: parse, call one library function, render.

Every command lives in the module of its group (``workflow``, ``queue``, ``pinion``,
``results``); rendering helpers are in :mod:`caliber.cli.render`. Errors from the library
(:class:`caliber.errors.CaliberError`) and usage errors become one line on stderr and an exit
code: 2 for bad input or usage, 1 for a failed workflow or an unusable queue.
"""

from __future__ import annotations

import sys

import click

from caliber import __version__
from caliber.cli.common import error_line
from caliber.cli.pinion import pinion
from caliber.cli.queue import queue
from caliber.cli.results import results
from caliber.cli.workflow import workflow


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="Example: caliber workflow queue pasta.json -p mypinion && caliber pinion init mypinion",
)
@click.version_option(__version__, "--version", "-V", prog_name="caliber")
def cli() -> None:
    """Caliber: queue workflows of plain Python functions, run them with a pinion, keep every
    result."""


cli.add_command(workflow)
cli.add_command(queue)
cli.add_command(pinion)
cli.add_command(results)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m caliber``."""
    from caliber.errors import CaliberError

    try:
        code = cli.main(args=argv, prog_name="caliber", standalone_mode=False)
    except click.exceptions.Abort:
        error_line("aborted")
        code = 130
    except click.UsageError as exc:
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        error_line(f"{exc.format_message()}{hint}")
        code = 2
    except click.ClickException as exc:
        error_line(exc.format_message())
        code = exc.exit_code
    except CaliberError as exc:
        error_line(str(exc))
        code = exc.exit_code
    except KeyboardInterrupt:
        error_line("interrupted")
        code = 130
    except BrokenPipeError:
        code = 0
    sys.exit(code if isinstance(code, int) else 0)
