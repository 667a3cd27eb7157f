"""Logging: one clear line per error, its causes and debug lines only with ``--verbose``; the
pinion's progress through a logging handler."""

from __future__ import annotations

import io
import logging
import re
import subprocess
from pathlib import Path

from caliber.pinion.progress import LOGGER, Reporter
from tests.pinion_helpers import make_folder, queue


def test_an_error_is_one_line_and_verbose_adds_its_causes(
    tmp_path: Path, caliber_cmd: list[str]
) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{\n")
    quiet = subprocess.run([*caliber_cmd, "workflow", "show", str(broken)],
                           capture_output=True, text=True)
    assert quiet.returncode == 2
    assert quiet.stderr.count("\n") == 1
    assert quiet.stderr.startswith(f"caliber: error: {broken}: line 2, column 1: ")
    loud = subprocess.run([*caliber_cmd, "--verbose", "workflow", "show", str(broken)],
                          capture_output=True, text=True)
    assert loud.returncode == 2
    first, rest = loud.stderr.split("\n", 1)
    assert first + "\n" == quiet.stderr  # the same line first
    assert "json.decoder.JSONDecodeError" in rest  # the cause, kept with `from exc`
    assert "The above exception was the direct cause of the following exception" in rest


def test_verbose_pinion_shows_debug_lines(tmp_path: Path, caliber_cmd: list[str]) -> None:
    wid = queue(make_folder(tmp_path / "wf"), [("add", [1])])
    plain = subprocess.run([*caliber_cmd, "pinion", "init", "p", "-a", "1", "-w", "0"],
                           capture_output=True, text=True, check=True)
    assert "claimed" not in plain.stderr
    assert f"workload {wid} (" in plain.stderr  # the progress lines, as before
    wid = queue(make_folder(tmp_path / "wf2"), [("add", [1])])
    loud = subprocess.run([*caliber_cmd, "-v", "pinion", "init", "p", "-a", "1", "-w", "0"],
                          capture_output=True, text=True, check=True)
    assert f"caliber: DEBUG: caliber.pinion.loop: claimed workload {wid} (attempt 1)" in (
        loud.stderr)
    assert loud.stderr.count(f"running workload {wid}") == 1  # shown once, not twice


def test_the_reporter_is_a_logging_handler_others_can_listen_to() -> None:
    stream = io.StringIO()
    seen: list[logging.LogRecord] = []

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    listener = Listener()
    logging.getLogger(LOGGER).addHandler(listener)
    try:
        reporter = Reporter("p", stream=stream)
        other = Reporter("q", stream=io.StringIO())  # a second pinion in this process
        reporter.skipped("abc", "run-secret does not match")
        reporter.error("the queue is out of reach")
        reporter.close()
        other.close()
    finally:
        logging.getLogger(LOGGER).removeHandler(listener)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(" pinion p: skipped workload abc: run-secret does not match")
    assert lines[1] == "pinion p: the queue is out of reach"
    assert len(lines) == 2
    assert [r.getMessage() for r in seen] == [
        "skipped workload abc: run-secret does not match", "the queue is out of reach"]
    assert [r.levelname for r in seen] == ["INFO", "ERROR"]
    assert logging.getLogger(LOGGER).handlers == []  # closing removed its handler


def test_a_reporter_never_closed_leaves_nothing_on_the_pinion_logger() -> None:
    """A Pinion or Reporter a caller forgets to close (a test, a script) must not leave its
    handler where every later listener of ``caliber.pinion`` would meet it: each Reporter's
    handler sits on a logger of its own."""
    stream = io.StringIO()
    Reporter("forgotten", stream=stream).error("shown once")  # never closed
    assert logging.getLogger(LOGGER).handlers == []
    assert stream.getvalue() == "pinion forgotten: shown once\n"
    later = io.StringIO()
    reporter = Reporter("next", stream=later)
    reporter.error("mine")
    reporter.close()
    assert later.getvalue() == "pinion next: mine\n"  # the forgotten one shows nothing of it
    assert stream.getvalue() == "pinion forgotten: shown once\n"


def test_verbose_never_prints_the_token(tmp_path: Path, caliber_cmd: list[str]) -> None:
    import os
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "CALIBER_SPECKLE_HOST": f"http://127.0.0.1:{port}",
           "CALIBER_SPECKLE_PROJECT": "abc", "CALIBER_SPECKLE_TOKEN": "tok-secret-value",
           "CALIBER_SPECKLE_TIMEOUT": "1"}
    done = subprocess.run([*caliber_cmd, "-v", "queue", "list"], capture_output=True,
                          text=True, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "caliber: DEBUG: caliber.settings: the remote queue: " in done.stderr
    assert "caliber: error: " in done.stderr
    assert "tok-secret-value" not in done.stderr + done.stdout


def test_on_a_terminal_one_live_line_is_replaced_and_results_stay() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    reporter = Reporter("p", stream=stream)
    reporter.idle(1, 3, 5)
    reporter.workload_started("abc", "pasta", 1)
    reporter.task_event({"kind": "start", "index": 1, "total": 2, "name": "boil"})
    reporter.workload_finished("completed", "results r1")
    reporter.close()
    text = stream.getvalue()
    clock = r"\d\d:\d\d:\d\d"  # each line starts with the time (the lasting ones with the date)
    assert re.match(rf"\r\x1b\[K{clock} pinion p: no work \(look 1/3\), next in 5 s", text)
    assert re.search(rf"\r\x1b\[K{clock} abc \(pasta\): task 1/2 boil \.\.\. ", text)
    last = text.rsplit("\r\x1b[K", 1)[1]  # the live line is cleared before the lasting one
    assert re.match(rf"\d{{4}}-\d\d-\d\d {clock} workload abc \(pasta\) completed in ", last)
    assert last.endswith(" s: results r1\n")
    quiet = Terminal()
    silent = Reporter("p", quiet=True, stream=quiet)
    silent.idle(1, 3, 5)
    silent.error("the queue is out of reach")
    silent.close()
    assert quiet.getvalue() == "pinion p: the queue is out of reach\n"
