"""Following a running workload: ``queue view`` (task k of n, run folder), ``queue logs``
(``-f`` until it finishes, Ctrl-C exits 130 quietly), the output kept with the Results, and
the pinion's live line counting on during a task."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.pinion import progress
from caliber.pinion.progress import Reporter
from tests.pinion_helpers import make_folder, start_pinion, status_of, stop, wait_for
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata

__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures

CHATTY = '''
import os, time

def talk(marker, lines):
    for i in range(lines):
        print(f"talk {i}", flush=True)
    while not os.path.exists(marker):
        time.sleep(0.02)
    print("heard the marker", flush=True)
    return lines

def last():
    print("the end", flush=True)
    return 1
'''


def caliber_run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "COLUMNS": "300"})


def view(workload_id: str) -> dict[str, Any]:
    done = caliber_run("queue", "view", workload_id, "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def follower(workload_id: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "caliber", "queue", "logs", workload_id, "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def queue_chatty(tmp_path: Path, marker: Path) -> str:
    folder = make_folder(tmp_path / "chatty", module="chatty", source=CHATTY)
    workflow = caliber.Workflow(
        caliber.Process([caliber.Task("chatty:talk", name="Talk", args=[str(marker), 3]),
                         caliber.Task("chatty:last", name="Last")]),
        "chatty", attachments=["chatty.py"], base_dir=folder)
    return workflow.queue(pinion="p")


def test_a_running_workload_is_viewed_and_followed_until_it_ends(
    tmp_path: Path, caliber_home: Path
) -> None:
    marker = tmp_path / "go"
    wid = queue_chatty(tmp_path, marker)
    done = caliber_run("queue", "logs", wid)
    assert done.returncode == 0 and done.stdout == ""
    assert done.stderr == f"no output from workload {wid}: it has not started yet\n"
    pinion = start_pinion("p", "-a", "1", "-w", "0")
    try:
        running = wait_for(lambda: (v := view(wid))["progress"] and v, what="progress")
        assert running["status"] == "running"
        assert running["work_dir"] == str(caliber_home / "runs" / "p" / f"{wid}-1")
        assert running["progress"]["task"] == 1 and running["progress"]["tasks"] == 2
        assert running["progress"]["name"] == "Talk" and running["progress"]["elapsed"] >= 0
        shown = caliber_run("queue", "view", wid).stdout
        assert "task 1 of 2: Talk (" in shown and "run folder" in shown

        interrupted, followed = follower(wid), follower(wid)
        for process in (interrupted, followed):  # both print what was written so far...
            assert process.stdout is not None
            assert [process.stdout.readline() for _ in range(3)] == [
                "talk 0\n", "talk 1\n", "talk 2\n"]
        assert status_of(wid) == "running"  # ... while the workload still runs
        interrupted.send_signal(signal.SIGINT)
        out, err = interrupted.communicate(timeout=30)
        assert interrupted.returncode == 130 and err == "" and out == ""

        marker.write_text("go")
        out, err = followed.communicate(timeout=60)
        assert followed.returncode == 0, err
        assert out == "heard the marker\nthe end\n" and err == ""
        assert status_of(wid) == "completed"
    finally:
        marker.write_text("go")
        stop(pinion, signal.SIGTERM)
    everything = "talk 0\ntalk 1\ntalk 2\nheard the marker\nthe end\n"
    assert caliber_run("queue", "logs", wid).stdout == everything
    assert caliber_run("queue", "logs", wid, "-f").stdout == everything  # finished: all, then exit
    ended = view(wid)
    assert ended["progress"] is None and ended["work_dir"] == running["work_dir"]
    assert caliber.get_results(wid).output == everything  # kept with the Results

    # Without the run folder (another machine's pinion, or removed), the Results have it.
    shutil.rmtree(running["work_dir"])
    assert caliber_run("queue", "logs", wid).stdout == everything


def test_the_output_kept_with_the_results_is_the_end_of_a_long_one(tmp_path: Path) -> None:
    from caliber.pinion.follow import OUTPUT_FILE, output_tail

    (tmp_path / OUTPUT_FILE).write_bytes(b"a" * 10 + b"b" * 20)
    assert output_tail(tmp_path, limit=20) == "[the first 10 bytes are left out]\n" + "b" * 20
    assert output_tail(tmp_path / "nowhere") is None


def test_logs_of_an_unknown_workload_is_one_error_line() -> None:
    done = caliber_run("queue", "logs", "zzzz")
    assert done.returncode == 2 and done.stderr.startswith("caliber: error: ")
    assert done.stderr.count("\n") == 1


def test_the_live_line_counts_on_during_a_task(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    clock = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    stream = Terminal()
    reporter = Reporter("p", stream=stream)
    reporter.workload_started("abc", "pasta", 1)
    reporter.running_in(tmp_path)
    reporter.task_event({"kind": "start", "index": 1, "total": 2, "name": "boil",
                         "branch": None})
    clock[0] += 0.4
    reporter.tick()  # too soon to write the line again
    clock[0] += 2.1
    reporter.tick()
    clock[0] += 10
    reporter.tick()
    reporter.close()
    lines = [part for part in stream.getvalue().split("\r\x1b[K") if part]
    assert all(re.match(r"\d\d:\d\d:\d\d $", line[:9]) for line in lines)  # the time of day
    assert [line[9:] for line in lines] == [
        "abc (pasta): task 1/2 boil ... 0.0 s", "abc (pasta): task 1/2 boil ... 2.5 s",
        "abc (pasta): task 1/2 boil ... 12.5 s"]
    saved = json.loads((tmp_path / "caliber-progress.json").read_text())
    assert saved["workload"] == "abc" and saved["task"]["name"] == "boil"
    assert os.listdir(tmp_path) == ["caliber-progress.json"]  # written whole, nothing left over


@pytest.mark.speckle
def test_a_remote_pinions_output_arrives_with_its_results(
    remote: Remote, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "chatty", module="chatty", source=CHATTY)
    marker = tmp_path / "go"
    marker.write_text("go")
    workflow = caliber.Workflow(
        caliber.Process([caliber.Task("chatty:talk", name="Talk", args=[str(marker), 2])]),
        "chatty", attachments=["chatty.py"], base_dir=folder)
    wid = workflow.queue(pinion="far", project=remote.project)
    waiting = caliber_run("queue", "logs", wid, "--project", remote.project)
    assert waiting.returncode == 0 and waiting.stdout == ""
    assert waiting.stderr == f"no output from workload {wid}: it has not started yet\n"
    ran = caliber_run("pinion", "init", "far", "-a", "1", "-w", "0.1",
                      "--project", remote.project)
    assert ran.returncode == 0 and "1 completed" in ran.stdout, ran.stderr
    said = "talk 0\ntalk 1\nheard the marker\n"
    shown = view_remote(wid, remote.project)
    assert shown["status"] == "completed" and shown["progress"] is None
    shutil.rmtree(shown["work_dir"])  # as if the pinion ran on another machine
    logs = caliber_run("queue", "logs", wid, "-f", "--project", remote.project)
    assert logs.returncode == 0 and logs.stdout == said, logs.stderr


def view_remote(workload_id: str, project: str) -> dict[str, Any]:
    done = caliber_run("queue", "view", workload_id, "--json", "--project", project)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_a_pinion_on_a_terminal_counts_on_during_a_task(tmp_path: Path) -> None:
    """A real pinion whose stderr is a terminal: its live line for one long task is written
    again with the time moved on, while the task still runs."""
    import pty
    import re
    import select

    marker = tmp_path / "go"
    wid = queue_chatty(tmp_path, marker)
    main, side = pty.openpty()
    pinion = subprocess.Popen([sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1",
                               "-w", "0"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=side)
    os.close(side)
    seen = b""

    def elapsed_shown() -> set[bytes] | None:
        nonlocal seen
        if select.select([main], [], [], 0.1)[0]:
            seen += os.read(main, 4096)
        shown = set(re.findall(rb"task 1/2 Talk \.\.\. (\d+\.\d) s", seen))
        return shown if len(shown) >= 3 else None

    try:
        wait_for(elapsed_shown, what="the live line counting on")
        assert status_of(wid) == "running"  # still in the first task
    finally:
        marker.write_text("go")
        pinion.wait(timeout=60)
        os.close(main)
    assert pinion.returncode == 0
