"""Output laid out for the place it goes: to a file or a pipe nothing is cut or wrapped (a
traceback keeps every file name and line number); in an 80x24 terminal (tmux) the tables fit
and ids are never split over lines."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from tests.pinion_helpers import make_folder, queue

LONG = "a_folder_name_long_enough_that_a_traceback_line_needs_more_than_a_hundred_columns"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, check=False,
                          cwd=Path(os.environ["CALIBER_HOME"]).parent)  # tmp: run writes there


def test_a_redirected_traceback_is_never_cut(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / LONG / LONG)
    wf = caliber.Workflow(caliber.Process([caliber.Task("pinfuncs:boom", name="boom")]), "tb",
                          attachments=["pinfuncs.py"], base_dir=folder)
    path = wf.export(folder / "tb.json")
    line = re.compile(r'File "(.+pinfuncs\.py)", line (\d+), in boom$', re.MULTILINE)
    run = cli("workflow", "run", str(path))
    assert run.returncode == 1
    found = line.search(run.stderr)
    assert found, run.stderr
    assert found.group(1).endswith(f"{LONG}/{LONG}/pinfuncs.py") and len(found.group(0)) > 200
    results_id = json.loads(cli("results", "list", "--json").stdout)[0]["id"]
    shown = cli("results", "show", results_id).stdout
    assert line.search(shown), shown
    assert "ValueError: burnt" in shown


# --- an 80x24 terminal -------------------------------------------------------------------


def test_a_table_gives_way_by_priority() -> None:
    from rich.console import Console

    from caliber.cli.render import Fit, table

    columns = ["id", "name", "owner", "when", "extra"]
    rows = [["k3v9q2mxa7", "n" * 40, "o" * 30, "2026-12-01 10:00:00", "x" * 10]]
    fit = Fit(shrink=("name", "owner"), drop=("extra", "owner"))
    # At 80 columns the less useful columns go before the name is cut (load-case variants
    # differ at their end); at 50 it is cut too.
    for width, shown in [(200, columns), (80, ["id", "name", "when"]),
                         (50, ["id", "name", "when"])]:
        console = Console(width=width, color_system=None)
        with console.capture() as captured:
            console.print(table(columns, rows, fit=fit, width=width))
        lines = captured.get().splitlines()
        assert lines[0].split() == shown
        assert len(lines) == 3 and all(len(line) <= width for line in lines), lines
        assert "k3v9q2mxa7" in lines[2] and "2026-12-01 10:00:00" in lines[2]
        assert ("n" * 40 in lines[2]) == (width >= 80)  # else shortened with "…" to fit


TMUX = shutil.which("tmux")


def in_terminal(tmp_path: Path, *args: str) -> str:
    """Run ``caliber ARGS`` in a tmux window of 80x24 and return the screen as text."""
    socket = str(tmp_path / "tmux.sock")
    done = tmp_path / f"done-{args[0]}"
    command = " ".join([sys.executable, "-m", "caliber", *args]) + f"; touch {done}; sleep 60"
    env = {**os.environ, "TERM": "xterm-256color"}
    env.pop("NO_COLOR", None)  # a terminal as people have it: in colour
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    subprocess.run([TMUX or "tmux", "-S", socket, "-f", os.devnull, "new-session", "-d",
                    "-x", "80", "-y", "24", command], check=True, env=env)
    try:
        from tests.pinion_helpers import wait_for

        wait_for(done.exists, what="the command in tmux")
        return subprocess.run([TMUX or "tmux", "-S", socket, "capture-pane", "-p", "-J"],
                              capture_output=True, text=True, check=True).stdout
    finally:
        subprocess.run([TMUX or "tmux", "-S", socket, "kill-server"], check=False,
                       capture_output=True)


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_tables_fit_an_80_column_terminal_and_ids_never_split(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    ids = [queue(folder, [("add", [1])], name=f"a-rather-long-workflow-name-{i}",
                 pinion="a-pinion-with-a-long-name") for i in range(3)]
    screen = in_terminal(tmp_path, "queue", "list")
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines), screen
    for wid in ids:
        assert any(wid in line for line in lines), screen  # whole, on one line
    created = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d")
    assert sum(bool(created.search(line)) for line in lines) == len(ids), screen
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init",
                    "a-pinion-with-a-long-name", "-a", "1", "-w", "0", "-q"], check=True,
                   capture_output=True)
    results = json.loads(cli("results", "list", "--json").stdout)
    screen = in_terminal(tmp_path, "results", "list")
    lines = screen.splitlines()
    for item in results:
        row = next((line for line in lines if item["id"] in line), None)
        assert row is not None, screen
        assert item["workflow"] in row, screen  # whole: the workload column gave way
    stamps = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    assert sum(bool(stamps.search(line)) for line in lines) == len(results), screen


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_at_80_columns_no_hash_wraps_and_no_file_name_breaks(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / LONG)
    workload = queue(folder, [("boom", [])], name="tb", pinion="p")
    screen = in_terminal(tmp_path, "queue", "view", workload)
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines), screen
    row = next(line for line in lines if line.startswith("pinfuncs.py"))
    assert "\u2026" in row and row.rstrip().endswith("644"), screen  # the hash gave way
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w",
                    "0", "-q"], check=False, capture_output=True)
    results_id = json.loads(cli("results", "list", "--json").stdout)[0]["id"]
    screen = in_terminal(tmp_path, "results", "show", results_id)  # -J: wrapped lines joined
    line = re.compile(r'File "(.+pinfuncs\.py)", line \d+, in boom$', re.MULTILINE)
    found = line.search(screen)
    assert found and len(found.group(1)) > 80 and Path(found.group(1)).is_file(), screen


def test_queue_list_marks_start_times_and_priorities_within_80_columns() -> None:
    import datetime as dt

    from rich.console import Console

    from caliber.cli.queue import LIST_FIT, _list_rows
    from caliber.cli.render import table

    now = dt.datetime.now(dt.UTC)
    start = now + dt.timedelta(hours=5)

    def item(n: int, name: str, status: str, not_before: str | None, priority: int) -> dict:
        return {"id": f"k3v9q2mx{n:02d}", "workflow": name, "pinion": "lab-pc",
                "status": status, "not_before": not_before, "priority": priority,
                "created_at": now.isoformat(), "attempts": 0, "results_id": None,
                "secret_ok": True, "resume_ok": None}

    for name, shown in [("analysis", ["starts", "prio"]), ("post-processing", ["starts"]),
                        ("a-rather-long-workflow-name-0", [])]:
        columns, rows = _list_rows([item(1, name, "queued", start.isoformat(), 5),
                                    item(2, name, "waiting", None, 0),
                                    item(3, name, "cancelled", None, -3)])
        assert columns[4:6] == ["starts", "prio"]
        console = Console(width=80, color_system=None)
        with console.capture() as captured:
            console.print(table(columns, rows, fit=LIST_FIT, width=80))
        lines = captured.get().splitlines()
        assert all(len(line) <= 80 for line in lines), lines
        head = lines[0].split()
        assert [c for c in ("starts", "prio") if c in head] == shown, lines  # they give way last
        assert "k3v9q2mx02" in lines[3] and "waiting" in lines[3]
        if "starts" in head:
            assert f"{start.astimezone():%H:%M}" in lines[2]
        if "prio" in head:
            assert lines[2].split()[3:5] == [f"{start.astimezone():%H:%M}", "+5"]
            assert lines[4].split()[3:5] == ["-", "-3"]


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed (apt-get install tmux)")
def test_waiting_start_times_and_priorities_fit_an_80_column_terminal(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf")
    from tests.pinion_helpers import workflow

    first = workflow(folder, [("add", [1])], name="analysis").queue(
        "lab-pc", not_before="+5h", priority=5)
    second = workflow(folder, [("add", [2])], name="post").queue("lab-pc", after=[first])
    screen = in_terminal(tmp_path, "queue", "list")
    lines = screen.splitlines()
    assert all(len(line) <= 80 for line in lines), screen
    head = lines[0].split()
    assert head[:5] == ["id", "workflow", "status", "starts", "prio"], screen  # pinion gave way
    row = next(line for line in lines if second in line)
    assert row.split()[2:5] == ["waiting", "-", "0"], screen
    assert next(line for line in lines if first in line).split()[4] == "+5", screen
