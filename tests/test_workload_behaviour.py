"""Unusual but ordinary workload code, run by a real pinion: odd return values, input(), and a
workload that writes to the pinion's message pipe. None of it may stop the pinion or lose a
result."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from tests.pinion_helpers import make_folder, queue

ODD = '''
import dataclasses, os, stat

@dataclasses.dataclass
class Half:
    x: int = 1
    later: int = dataclasses.field(init=False)

def latin1_names():
    os.makedirs("d", exist_ok=True)
    with open(b"d/caf\\xe9.txt", "wb"):
        pass
    return os.listdir("d")

def huge():
    return 10**5000

def half():
    return Half()

def fails_latin1():
    raise ValueError(os.listdir("d")[0])

def ok(x):
    return x

def ask():
    same = os.path.samestat(os.fstat(0), os.stat(os.devnull))
    try:
        return [same, input()]
    except EOFError:
        return [same, "EOF"]

def forge(line):
    """Write ``line`` to every pipe this process may write to (the message pipe among them)."""
    import fcntl
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        try:
            writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
            if fd > 2 and writable and stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, line.encode())
        except OSError:
            pass
    return "wrote"
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", module="odd", source=ODD)


def cli(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          check=False)
    assert done.returncode == 0 and not done.stderr, done.stderr
    return done.stdout.decode("utf-8")  # strict: what Caliber prints is valid UTF-8


def test_return_values_json_cannot_carry_are_stored_and_keep_the_others(folder: Path) -> None:
    wid = queue(folder, [("latin1_names", []), ("huge", []), ("half", []), ("ok", [7])],
                module="odd")
    pinion_process()
    results = caliber.get_results(wid)
    assert results.ok
    assert results["latin1_names-0"] == ["caf\\xe9.txt"]
    assert results["huge-1"] == "1" + "0" * 5000
    assert results["half-2"] == {"x": 1}
    assert results["ok-3"] == 7
    notes = [t.conversion or "" for t in results.tasks]
    assert "not valid Unicode" in notes[0]
    assert "integer too long" in notes[1]
    assert "Half.later left out" in notes[2]
    shown = " ".join(cli("results", "show", results.id).split())
    assert "(integer too long for JSON stored as decimal text)" in shown
    assert json.loads(cli("results", "show", results.id, "--json"))["tasks"][3]["return"] == 7


def test_an_exception_message_with_non_utf8_bytes_is_kept(folder: Path) -> None:
    wid = queue(folder, [("latin1_names", []), ("fails_latin1", []), ("ok", [1])], module="odd")
    pinion_process()
    results = caliber.get_results(wid)
    assert results.status == "failed"
    assert results["latin1_names-0"] == ["caf\\xe9.txt"]
    assert results.error is not None and results.error.message == "caf\\xe9.txt"


def pinion_process() -> None:
    """``caliber pinion init p`` in its own process, its standard input a pipe that stays open
    and empty (as a terminal nobody types in), until it has run out of work."""
    silent, keyboard = os.pipe()
    pinion = subprocess.Popen(
        [sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w", "0"],
        stdin=silent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    os.close(silent)
    try:
        _out, err = pinion.communicate(timeout=60)
    finally:
        os.close(keyboard)
        if pinion.poll() is None:
            pinion.kill()
            pinion.communicate()
    assert pinion.returncode == 0, err
    assert "Traceback" not in err


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_workload_reading_stdin_gets_end_of_file(
    folder: Path, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, input() waited on the pinion's stdin forever (on a terminal: SIGTTIN)."""
    monkeypatch.setenv("CALIBER_CHILD_START", start)
    wid = queue(folder, [("ask", [])], module="odd")
    pinion_process()
    assert caliber.get_results(wid)["ask-0"] == [True, "EOF"]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize("line", [
    "not json\n",
    '{"event": {"kind": "end"}}\n',
    '{"results": {"workflow": 1}}\n',
    '{"hello": "pinion"}\n',
])
def test_a_workload_writing_to_the_message_pipe_fails_alone(folder: Path, line: str) -> None:
    forged = queue(folder, [("ok", [1]), ("forge", [line]), ("ok", [2])], module="odd")
    after = queue(folder, [("ok", [3])], module="odd")
    pinion_process()  # its children hold no pipe but the message pipe
    results = caliber.get_results(forged)
    assert results.error is not None and results.error.type == "ForeignMessage"
    assert "message pipe" in results.error.message
    assert results["ok-0"] == 1  # what ended before the forged line is kept
    assert json.loads(cli("queue", "view", forged, "--json"))["status"] == "failed"
    assert caliber.get_results(after)["ok-0"] == 3
