"""Parallel branches: 4 branches that each sleep 1 s, ``BranchProcess(parallel=4)`` against
the same branch process run one after the other (no ``parallel``), both through ``caliber
workflow run`` in one round, alternating. The figure is the run's own time, from its Results
(``finished_at - started_at``: the fork of each branch, the pickled values back and the merge
of ``g`` included; the command's start-up, the same for both, not). CPU-light tasks: what
parallel branches can save is the waiting, up to 4x with 4 at a time, on any number of
cores. ``python -m bench.run`` includes this row; ``python -m bench.parallel_branches
[--quick]`` prints it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

from bench.report import Row

BRANCHES = 4
SLEEP = 1.0  # seconds each branch's task sleeps
QUICK_SLEEP = 0.25
TARGET = 0.3  # at most this fraction of the serial run's time (4 at once: 0.25 at best)

FUNCTIONS = '''
import time

def nap(branch, seconds):
    time.sleep(seconds)
    return branch
'''


def expected_ids() -> list[str]:
    return ["branches-parallel-4"]


def _workflow(folder: Path, parallel: int | None, seconds: float) -> Path:
    node: dict[str, object] = {
        "type": "branch", "name": "naps", "branches": BRANCHES,
        "tasks": [{"type": "task", "name": "nap", "function": "napping:nap",
                   "args": [[b, seconds] for b in range(BRANCHES)]}]}
    if parallel is not None:
        node["parallel"] = parallel
    name = "parallel" if parallel else "serial"
    path = folder / f"{name}.json"
    path.write_text(json.dumps({"caliber": 1, "name": name, "attachments": ["napping.py"],
                                "process": node}))
    return path


def _run_time(path: Path, env: dict[str, str]) -> float:
    done = subprocess.run([sys.executable, "-m", "caliber", "workflow", "run", path.name,
                           "--json"], cwd=path.parent, env=env, capture_output=True,
                          text=True, check=True)
    results = json.loads(done.stdout)
    from datetime import datetime

    started = datetime.fromisoformat(results["started_at"])
    finished = datetime.fromisoformat(results["finished_at"])
    return (finished - started).total_seconds()


def measure(seconds: float, reps: int, root: Path) -> dict[str, list[float]]:
    folder = root / "wf"
    folder.mkdir(parents=True)
    (folder / "napping.py").write_text(textwrap.dedent(FUNCTIONS))
    env = {**os.environ, "CALIBER_HOME": str(root / "home")}
    parallel, serial = _workflow(folder, BRANCHES, seconds), _workflow(folder, None, seconds)
    out: dict[str, list[float]] = {"parallel": [], "serial": []}
    for _ in range(reps):
        out["parallel"].append(_run_time(parallel, env))
        out["serial"].append(_run_time(serial, env))
    return out


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    """The parallel-branches row of the report (see :func:`expected_ids`)."""
    seconds = QUICK_SLEEP if quick else SLEEP
    folder = root / "parallel-branches"
    error = None
    try:
        figures = measure(seconds, reps, folder)
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        figures, error = {}, f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    row = Row(id="branches-parallel-4", section="Parallel branches",
              figure=f"{BRANCHES} branches each sleeping {seconds:g} s, parallel={BRANCHES}",
              unit="s", better="lower", baseline="the same branches one after the other",
              target=f"<= {TARGET:g}x", target_op="<=", target_value=TARGET)
    row.fill(figures.get("parallel", []), figures.get("serial", []))
    if error:
        row.unavailable = error
    return [row]



def main(argv: list[str] | None = None) -> int:
    from bench.report import module_main

    return module_main("python -m bench.parallel_branches", rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
