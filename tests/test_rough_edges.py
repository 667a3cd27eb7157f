"""The rough edges a newcomer hit (issue 23): help for a bare group, help that fits 80
columns, piped output without trailing spaces or wrapping, ``| head`` ending quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest

from caliber.cli import GROUPS, cli
from tests.pinion_helpers import make_folder, queue


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, check=False, env={**os.environ, **(env or {})},
                          cwd=Path(os.environ["CALIBER_HOME"]).parent)


@pytest.mark.parametrize("args", [[], ["queue"], ["workflow"], ["results"]])
def test_a_bare_group_prints_its_help_not_an_error_line(args: list[str]) -> None:
    shown = run(*args)
    assert shown.returncode == 2
    assert "caliber: error" not in shown.stderr
    assert shown.stderr.startswith(f"Usage: caliber {' '.join(args)}".rstrip() + " [OPTIONS]")
    assert "\nCommands:\n" in shown.stderr and len(shown.stderr.splitlines()) > 8


def every_command() -> list[list[str]]:
    found: list[list[str]] = [[]]
    context = click.Context(cli)
    for name in GROUPS:
        group = cli.get_command(context, name)
        found.append([name])
        if isinstance(group, click.Group):
            found += [[name, sub] for sub in group.list_commands(context)]
    return found


def test_every_help_fits_80_columns() -> None:
    from click.testing import CliRunner

    runner = CliRunner(env={"COLUMNS": "80"})
    for args in every_command():
        shown = runner.invoke(cli, [*args, "--help"], prog_name="caliber")
        assert shown.exit_code == 0, (args, shown.output)
        wide = [line for line in shown.output.splitlines() if len(line) > 80]
        assert not wide, (args, wide)


@pytest.fixture
def finished(tmp_path: Path) -> str:
    """A completed workload whose return value is longer than 100 columns."""
    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", ["x" * 150, "y"])], name="long-values", pinion="p")
    done = run("pinion", "init", "p", "-a", "1", "-w", "0", "-q")
    assert done.returncode == 0, done.stderr
    return workload


def test_piped_output_has_no_trailing_spaces_and_no_wrapped_values(finished: str) -> None:
    results_id = json.loads(run("results", "list", "--json").stdout)[0]["id"]
    for args in (["queue", "view", finished], ["results", "show", results_id],
                 ["results", "list"], ["queue", "list"]):
        shown = run(*args)
        assert shown.returncode == 0, shown.stderr
        trailing = [line for line in shown.stdout.splitlines() if line != line.rstrip()]
        assert not trailing, (args, trailing)
    value = run("results", "show", results_id).stdout
    assert "x" * 150 + "y" in value  # whole, on one line


def test_a_reader_that_goes_away_ends_the_command_quietly(finished: str) -> None:
    for args in (["queue", "view", finished], ["results", "list"]):
        shell = " ".join([sys.executable, "-m", "caliber", *args]) + " | head -1"
        piped = subprocess.run(["bash", "-o", "pipefail", "-c", shell], capture_output=True,
                               text=True, check=False,
                               cwd=Path(os.environ["CALIBER_HOME"]).parent)
        assert piped.returncode == 0, (args, piped.stderr)
        assert piped.stderr == "", piped.stderr
