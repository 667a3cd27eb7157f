"""Helpers for pinion tests: workflow folders on disk, queueing, pinion subprocesses."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import caliber
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target

FUNCTIONS = '''
import os, time
from caliber import context

def add(x, y=1):
    context.g.last = x + y
    return x + y

def slow(seconds, marker=None):
    if marker:
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
    time.sleep(seconds)
    return seconds

def boom(message="burnt"):
    raise ValueError(message)

def pid():
    return os.getpid()

def crash(how):
    if how == "exit":
        os._exit(3)
    if how == "segv":
        import ctypes
        ctypes.string_at(0)
    if how == "print":
        import sys
        for _ in range(20000):
            sys.stdout.write("x" * 100 + "\\n")
        return "printed"
    if how == "fork":
        import subprocess
        subprocess.Popen(["sleep", "60"])
        return "forked"
    if how == "memory":
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (512 * 2**20, 512 * 2**20))
        blob = bytearray(2 * 2**30)
        return len(blob)

def unjsonable():
    class Thing:
        def __repr__(self):
            return "<a thing>"
    return {"thing": Thing(), "set": {3, 1, 2}}
'''


BLOCKING = '''
import os, time

def add(x, y=1):
    return x + y

def until(path):
    while not os.path.exists(path):
        time.sleep(0.02)
    return path
'''
"""Task functions for tests of pinions that must hold a workload: ``until(path)`` returns
when the file ``path`` exists."""


def make_folder(path: Path, module: str = "pinfuncs", source: str = FUNCTIONS) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{module}.py").write_text(textwrap.dedent(source))
    return path


def workflow(folder: Path, tasks: list[tuple[str, list[Any]]], *, module: str = "pinfuncs",
             name: str = "wf") -> caliber.Workflow:
    """A workflow of tasks ``(function name, args)`` from the module in ``folder``."""
    items = [
        caliber.Task(f"{module}:{fn}", name=f"{fn}-{i}", args=args)
        for i, (fn, args) in enumerate(tasks)
    ]
    return caliber.Workflow(caliber.Process(items), name, attachments=[f"{module}.py"],
                            base_dir=folder)


def queue(folder: Path, tasks: list[tuple[str, list[Any]]], pinion: str = "p", **kw: Any) -> str:
    return workflow(folder, tasks, **kw).queue(pinion=pinion)


def start_pinion(name: str, *args: str, env: dict[str, str] | None = None,
                 cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "caliber", "pinion", "init", name, *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **(env or {})}, cwd=cwd, start_new_session=True,
    )


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(workload_id: str) -> str:
    with open_backend(local_target()) as backend:
        return backend.get(workload_id).status.value


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); read its state where /proc exists.
    stat = Path(f"/proc/{pid}/stat")
    if stat.exists():
        try:
            return stat.read_text().split(")")[-1].split()[0] != "Z"
        except OSError:
            return False
    return True


def stop(process: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if process.poll() is None:
        os.kill(process.pid, sig)
    process.communicate(timeout=30)  # also closes its pipes
