"""``caliber pinion ...``: Start a pinion, the worker that runs queued workloads."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import click

from caliber.cli.common import Bounded, json_option, print_json, target_options
from caliber.settings import (
    BOUNDS,
    DEFAULT_ATTEMPTS,
    DEFAULT_CANCEL_GRACE,
    DEFAULT_CONCURRENCY,
    DEFAULT_LEASE,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_WAIT,
    PREFIX,
)
from caliber.sizes import DEFAULT_LOG_MAX, MAX_LOG_MAX, MIN_LOG_MAX, format_size

if TYPE_CHECKING:
    from caliber.queue.target import QueueTarget


class SettingOption(click.Option):
    """An option whose twin is a ``CALIBER_*`` setting: not given, its value is the setting's,
    read from the settings' one source (the environment over ``.caliber/.env``) and validated
    by the settings model, so a bad value is one line naming the variable; ``--help`` shows
    the variable and the documented default."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        return None  # the settings read the environment themselves (get_default)

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return click.Parameter.get_error_hint(self, ctx)  # a bad variable names itself

    def get_default(self, ctx: click.Context, call: bool = True) -> Any:
        from caliber.settings import load_settings, lookup

        if not call or self.envvar is None or lookup(str(self.envvar)) is None:
            return super().get_default(ctx, call=call)  # not set: no validation to do
        return getattr(load_settings(), str(self.envvar).removeprefix(PREFIX).lower())


class ModuleNames(click.types.StringParamType):
    """Module names, comma-separated (``numpy,scipy.linalg``): a tuple of them."""

    name = "MODULES"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        for name in names:
            if not all(part.isidentifier() for part in name.split(".")):
                self.fail(f"{name!r} is not a module name (names are separated by commas).",
                          param, ctx)
        return names


class Size(click.types.StringParamType):
    """A size in bytes: ``65536``, ``100M``, ``1G`` (powers of 1024); 0 or at least ``min``."""

    name = "BYTES"

    def __init__(self, min: int) -> None:
        self.min = min

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        from caliber.sizes import parse_size

        if isinstance(value, int):
            return value
        try:
            size = parse_size(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
        if size != 0 and not self.min <= size <= MAX_LOG_MAX:
            self.fail(f"{value!r} is not 0 (no cap), nor from {format_size(self.min)} to "
                      f"{format_size(MAX_LOG_MAX)}.", param, ctx)
        return size


@click.group(epilog="Example: caliber pinion init mypinion -a 100 -w 10")
def pinion() -> None:
    """Start a pinion, the worker that runs queued workloads."""


@pinion.command(
    "init",
    epilog="Examples: caliber pinion init mypinion | caliber pinion init mypinion -a 100 -w 10 "
    "| caliber pinion init mypinion --forever --timeout 3600 "
    "| caliber pinion init mypinion --forever --concurrency 4",
)
@click.argument("name")
@click.option("-a", "--attempts", type=Bounded(BOUNDS["pinion_attempts"]),
              default=DEFAULT_ATTEMPTS, show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_ATTEMPTS", show_envvar=True,
              help="Empty looks for work in a row before stopping (0: listen until stopped).")
@click.option("-w", "--wait", type=Bounded(BOUNDS["pinion_wait"]), default=DEFAULT_WAIT,
              show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_WAIT", show_envvar=True,
              help="Seconds between looks for work (fractions allowed).")
@click.option("--forever", is_flag=True, help="Listen until stopped (the same as -a 0).")
@click.option("-c", "--concurrency", type=Bounded(BOUNDS["pinion_concurrency"]),
              default=DEFAULT_CONCURRENCY, show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_CONCURRENCY", show_envvar=True,
              help="Workloads run at once, each in its own process, run folder and lease.")
@click.option("--lease", type=Bounded(BOUNDS["pinion_lease"]), default=DEFAULT_LEASE,
              show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_LEASE", show_envvar=True,
              help="Seconds a claimed workload is held without renewal; a dead pinion's work is "
              "taken again after this.")
@click.option("--timeout", type=Bounded(BOUNDS["pinion_timeout"]), default=None,
              cls=SettingOption,
              envvar="CALIBER_PINION_TIMEOUT", show_envvar=True,
              help="Seconds a workload may run before it is stopped and failed.")
@click.option("--cancel-grace", type=Bounded(BOUNDS["pinion_cancel_grace"]),
              default=DEFAULT_CANCEL_GRACE, show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_CANCEL_GRACE", show_envvar=True,
              help="Seconds between SIGTERM and SIGKILL of a task stopped by 'queue cancel "
              "--now', or of one still running past its time limit.")
@click.option("--max-attempts", type=Bounded(BOUNDS["pinion_max_attempts"]),
              default=DEFAULT_MAX_ATTEMPTS, show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_MAX_ATTEMPTS", show_envvar=True,
              help="Claims of one workload (after pinions died) before it is failed.")
@click.option("--keep-runs", type=Bounded(BOUNDS["pinion_keep_runs"]), default=None, metavar="N",
              cls=SettingOption, envvar="CALIBER_PINION_KEEP_RUNS", show_envvar=True,
              help="Keep only the newest N run folders of finished workloads (default: all); "
              "never removes a queued or running workload's.")
@click.option("--preload", type=ModuleNames(), default=(), cls=SettingOption,
              envvar="CALIBER_PINION_PRELOAD", show_envvar=True,
              help="Modules to import once, before the workloads' processes start (e.g. "
              "numpy,scipy): workloads that use them do not import them each time.")
@click.option("--log-max", type=Size(min=MIN_LOG_MAX), default=format_size(DEFAULT_LOG_MAX),
              show_default=True, cls=SettingOption,
              envvar="CALIBER_PINION_LOG_MAX", show_envvar=True,
              help="Bytes a run's output.log keeps (suffixes K, M, G; 0: no cap): past them "
              "its middle is cut out, with a line saying so.")
@click.option("-q", "--quiet", is_flag=True, help="Show no progress, only errors and the summary.")
@json_option
@target_options
def init(
    name: str, attempts: int, wait: float, forever: bool, concurrency: int, lease: float,
    timeout: float | None,
    cancel_grace: float, max_attempts: int, keep_runs: int | None,
    preload: tuple[str, ...], log_max: int,
    quiet: bool, as_json: bool, target: QueueTarget,
) -> None:
    """Start the pinion NAME: run the workloads queued for it, one by one (or --concurrency
    at once), each in its own process and working folder, and store their results.

    Ctrl-C (or SIGTERM) once: finish the running workloads, then stop. Twice: stop now and put
    the running workloads back in the queue.
    """
    from caliber.pinion.child import child_main
    from caliber.pinion.platform import start_fork_server

    # First: it starts (a fresh interpreter) on another core while this one loads the queue.
    server = start_fork_server(child_main, preload)
    from caliber.pinion.api import run_pinion
    from caliber.pinion.loop import PinionConfig

    config = PinionConfig(
        name=name, attempts=0 if forever else attempts, wait=wait, lease=lease,
        timeout=timeout, max_attempts=max_attempts, keep_runs=keep_runs, preload=preload,
        log_max=log_max, cancel_grace=cancel_grace, concurrency=concurrency,
    )
    summary = run_pinion(config, target, quiet=quiet, server=server)
    if as_json:
        print_json(summary.to_dict())
    else:
        from caliber.text import for_terminal

        skipped = f", {len(summary.skipped)} skipped" if summary.skipped else ""
        lost = f", {summary.lost} lost to other pinions" if summary.lost else ""
        errors = f", {len(summary.errors)} stopped by errors" if summary.errors else ""
        cancelled = f", {summary.cancelled} cancelled" if summary.cancelled else ""
        click.echo(f"pinion {name}: ran {summary.ran} ({summary.completed} completed, "
                   f"{summary.failed} failed{cancelled}){skipped}{lost}{errors}")
        for workload_id, reason in summary.skipped:
            click.echo(f"  skipped {workload_id}: {for_terminal(reason)}")
        for workload_id, reason, then in summary.errors:
            click.echo(f"  error {workload_id}: {for_terminal(reason)}; {for_terminal(then)}")
        if summary.waiting:
            click.echo(_waiting_line(name, summary.waiting))
        if summary.later or summary.chained:
            click.echo(_later_line(summary.later, summary.next_start, summary.chained))
    if summary.cold:
        raise SystemExit(130)
    if summary.stranded:  # a claim stands until its lease ends: not a clean exit
        raise SystemExit(1)


def _later_line(later: int, next_start: dt.datetime | None, chained: int) -> str:
    """``2 workloads start later (next at 22:00); 1 waits for others``: what a pinion that
    stopped after its empty looks leaves to a later one (``--not-before``, ``--after``)."""
    def workloads(n: int, verb: str) -> str:
        return f"{n} workloads {verb}" if n > 1 else f"1 workload {verb}s"

    parts = []
    if later:
        when = "" if next_start is None else f" (next at {_clock(next_start)})"
        parts.append(workloads(later, "start") + f" later{when}")
    if chained:
        parts.append(workloads(chained, "wait") + " for others to complete")
    return "; ".join(parts)


def _clock(moment: dt.datetime) -> str:
    """A start time on this machine's clock: ``22:00`` today, ``2026-12-08 22:00`` another
    day (seconds when it has them)."""
    local = moment.astimezone()
    clock = local.strftime("%H:%M:%S" if local.second or local.microsecond else "%H:%M")
    if local.date() == dt.datetime.now().astimezone().date():
        return clock
    return f"{local.date().isoformat()} {clock}"


def _waiting_line(name: str, waiting: dict[str, int]) -> str:
    """``no work for mypinion; waiting work: MyPinion (2)``: work queued for other names."""
    from caliber.text import for_terminal

    listed = ", ".join(f"{for_terminal(other)} ({count})" for other, count in sorted(
        waiting.items(), key=lambda item: (item[0].lower() != name.lower(), item[0])))
    case = any(other.lower() == name.lower() for other in waiting)
    hint = " (pinion names are case-sensitive)" if case else ""
    return f"no work for {name}; waiting work: {listed}{hint}"
