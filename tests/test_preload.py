"""What a workload's process starts with: only Caliber's runner (no pydantic, no threading),
plus the modules a pinion was asked to preload (``caliber pinion init --preload``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.pinion.platform import ForkServer
from tests.pinion_helpers import make_folder, queue, start_pinion, status_of

PROBE = '''
import sys

def modules(*names):
    return {name: name in sys.modules for name in names}
'''

# Modules a child must not start with: each one makes every fork dearer (its memory) or runs
# hooks in every child (threading's and random's at-fork handlers), and none is needed to run
# a workload. colorsys stands for a module a pinion preloads (tiny, and nothing imports it).
HEAVY = ["pydantic", "pydantic_core", "threading", "logging", "random", "subprocess", "click",
         "rich", "sqlite3", "caliber.results.model", "caliber.queue.sqlite.backend", "colorsys"]


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", module="probe", source=PROBE)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    pinion = start_pinion("p", "-a", "1", "-w", "0", "-q", *args, env=env)
    _out, err = pinion.communicate(timeout=120)
    return pinion.returncode, err


def test_the_childs_modules_load_neither_pydantic_nor_threading() -> None:
    """What the fork server (and a spawned child) imports: the child's module and nothing
    heavy. Before, it loaded pydantic and built every Results model."""
    code = ("import sys, caliber.pinion.child; "
            f"print(sorted(m for m in {HEAVY[:-1]!r} if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.strip()
    assert shown == "[]"


@pytest.mark.skipif(not ForkServer.available(), reason="the fork server is Linux's")
def test_a_workload_starts_without_the_pinions_modules(folder: Path) -> None:
    wid = queue(folder, [("modules", HEAVY)], module="probe")
    assert run()[0] == 0
    loaded = caliber.get_results(wid)["modules-0"]
    assert loaded == {name: False for name in HEAVY}


@pytest.mark.parametrize("how", ["option", "variable"])
def test_preloaded_modules_are_there_when_a_workload_starts(folder: Path, how: str) -> None:
    wid = queue(folder, [("modules", ["colorsys", "json"])], module="probe")
    if how == "option":
        code, err = run("--preload", "colorsys, json")
    else:
        code, err = run(env={"CALIBER_PINION_PRELOAD": "colorsys,json"})
    assert code == 0, err
    assert caliber.get_results(wid)["modules-0"] == {"colorsys": True, "json": True}


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_a_module_that_cannot_be_preloaded_stops_the_pinion_before_any_work(
    folder: Path, start: str
) -> None:
    wid = queue(folder, [("modules", [])], module="probe")
    code, err = run("--preload", "json,no_such_module_here", env={"CALIBER_CHILD_START": start})
    assert code == 2
    assert err.strip().splitlines() == [
        "caliber: error: pinion p: cannot preload module 'no_such_module_here': "
        "ModuleNotFoundError: No module named 'no_such_module_here'"]
    assert status_of(wid) == "queued"  # not claimed, not tried


def test_a_module_that_fails_as_it_is_imported_is_named_with_its_error(
    folder: Path, tmp_path: Path
) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "broken_lib.py").write_text("raise RuntimeError('no licence found')\n")
    wid = queue(folder, [("modules", [])], module="probe")
    code, err = run("--preload", "broken_lib", env={"PYTHONPATH": str(tmp_path / "lib")})
    assert code == 2
    assert err.strip().splitlines() == [
        "caliber: error: pinion p: cannot preload module 'broken_lib': "
        "RuntimeError: no licence found"]
    assert status_of(wid) == "queued"


def test_a_name_that_is_not_a_module_name_is_refused(folder: Path) -> None:
    code, err = run("--preload", "numpy,1x")
    assert code == 2
    assert "'1x' is not a module name" in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not ForkServer.available(), reason="the fork server is Linux's")
def test_a_server_that_cannot_start_says_why() -> None:
    def local(messages_fd: int, control_fd: int) -> None:  # not importable by its name
        raise AssertionError("never run")

    server = ForkServer(local)
    try:
        with pytest.raises(caliber.errors.ChildStartError, match="has no attribute"):
            server.wait_ready()
        assert not server.alive
    finally:
        server.close()


@pytest.mark.skipif(not ForkServer.available(), reason="the fork server is Linux's")
def test_a_server_started_early_ends_when_the_pinion_cannot_start() -> None:
    """``caliber pinion init`` starts the fork server before it checks anything: a pinion
    that never starts (a name that is not valid) stops it again."""
    from caliber.errors import UsageError
    from caliber.pinion.api import run_pinion
    from caliber.pinion.child import child_main
    from caliber.pinion.loop import PinionConfig
    from caliber.pinion.platform import start_fork_server
    from caliber.queue.target import local_target

    server = start_fork_server(child_main)
    assert server is not None and server.alive
    with pytest.raises(UsageError, match="not valid"):
        run_pinion(PinionConfig(name="no/slashes"), local_target(), server=server)
    assert server._process.poll() is not None  # ended and waited for
