"""Issue 21: the big arrays a ``workflow run`` writes into ``.caliber/values/`` before they go
into the content store do not stay behind. A run cleans up its own on every way out it
controls (Ctrl-C outside a task, an exception while its Results are made); what a run killed
outright (SIGKILL) left, the next run in that folder removes, never the files of a run still
going there. Real ``caliber workflow run`` processes, sent real signals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from tests.pinion_helpers import make_folder, wait_for

FUNCS = '''
import time
import numpy
from caliber import context


class Slow:
    """A value in g whose conversion, after its task, waits (a stand-in for a big value
    being stored when the run is stopped): the run is outside any task then."""

    def __init__(self, marker):
        self.marker = marker

    def __repr__(self):
        open(self.marker, "w").close()
        time.sleep(120)
        return "slow"


class Stop(BaseException):
    pass


class Raising:
    def __repr__(self):
        raise Stop("stopped while the Results were made")


def field(marker):
    context.g.field = numpy.arange(100_000, dtype="float64")  # 800 kB: kept as binary
    context.g.slow = Slow(marker) if marker else Raising()
    return 1


def small():
    return numpy.linspace(0.0, 1.0, 20_000)  # 160 kB: kept as binary too
'''


def folder_with_workflows(path: Path) -> Path:
    make_folder(path, "vfuncs", FUNCS)
    for name, task in (
            ("block", caliber.Task("vfuncs:field", name="field", args=[str(path / "marker")])),
            ("quick", caliber.Task("vfuncs:small", name="small"))):
        caliber.Workflow(caliber.Process([task]), name, attachments=["vfuncs.py"],
                         base_dir=path).export(path / f"{name}.json")
    return path


def start_run(folder: Path, name: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "caliber", "workflow", "run",
                             str(folder / f"{name}.json")], cwd=folder, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def arrays(folder: Path) -> list[str]:
    """Every file under the folder's ``.caliber/values``, relative to it."""
    base = folder / ".caliber" / "values"
    return sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())


def npy(folder: Path) -> list[str]:
    return [p for p in arrays(folder) if p.endswith(".npy")]


def blocked(folder: Path) -> subprocess.Popen[str]:
    """A run of ``block.json`` stopped outside its task, its array written."""
    marker = folder / "marker"
    marker.unlink(missing_ok=True)
    run = start_run(folder, "block")
    wait_for(lambda: marker.exists() or run.poll() is not None, 60, "the run to block")
    assert run.poll() is None, run.communicate()
    assert npy(folder), arrays(folder)
    return run


def test_ctrl_c_outside_a_task_leaves_no_array_behind(tmp_path: Path) -> None:
    folder = folder_with_workflows(tmp_path / "wf")
    run = blocked(folder)
    run.send_signal(signal.SIGINT)
    _out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "Traceback" not in err
    assert not (folder / ".caliber").exists(), arrays(folder)


def test_an_exception_while_the_results_are_made_leaves_no_array_behind(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = folder_with_workflows(tmp_path / "wf")
    monkeypatch.chdir(folder)
    task = caliber.Task("vfuncs:field", name="field", args=[None])
    wf = caliber.Workflow(caliber.Process([task]), "raising", base_dir=folder)
    with pytest.raises(BaseException, match="stopped while the Results were made"):
        wf.run(work_dir=folder)
    assert not (folder / ".caliber").exists(), arrays(folder)


def test_a_killed_runs_arrays_go_with_the_next_run_but_a_live_runs_stay(tmp_path: Path) -> None:
    folder = folder_with_workflows(tmp_path / "wf")
    killed = blocked(folder)
    left = npy(folder)
    killed.kill()  # SIGKILL: nothing of it runs any more
    killed.communicate(timeout=60)
    assert npy(folder) == left  # what it could not clean up

    going = blocked(folder)  # the next run: it removed the killed run's files first
    mine = npy(folder)
    assert len(mine) == 1 and mine != left
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run",
                           str(folder / "quick.json")], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert npy(folder) == mine  # a run going in the same folder keeps its files
    assert going.poll() is None

    going.send_signal(signal.SIGINT)
    going.communicate(timeout=60)
    assert not (folder / ".caliber").exists(), arrays(folder)
    results = caliber.get_results(workflow="quick")
    assert results.ok and len(results["small"]) == 20_000


def test_a_killed_runs_arrays_are_swept_even_when_its_pid_is_alive(tmp_path: Path) -> None:
    """A process id says nothing once reused: the lock does. A values folder named for this
    very process (alive), whose lock nobody holds, is a killed run's."""
    from caliber.results.runvalues import sweep

    base = tmp_path / ".caliber" / "values"
    stale = base / f"{os.getpid()}-0123456789ab"
    stale.mkdir(parents=True)
    (stale / "x.npy").write_bytes(b"left")
    (base / f"{stale.name}.lock").touch()
    assert sweep(base) == 1
    assert os.listdir(base) == []
