"""The dashboard's plots and summaries of stored arrays, read slice by slice: the same drawing
as reducing the whole array in memory (lines exactly, heat maps to rounding), a damaged blob
refused, and the memory of a plot of 10**7 float64 bounded by a slice instead of growing with
the array (80 MB read whole before)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import caliber
from caliber.dashboard import charts, data
from caliber.errors import BlobMismatchError
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results import arrays
from caliber.results.arrays import describe
from tests.pinion_helpers import make_folder

VALUES = '''
import os
import numpy as np

def line(n, seed=0):
    a = np.random.default_rng(seed).standard_normal(n)
    a[n // 3] = 1e6  # a spike: never lost
    if n > 100:
        a[n // 2:n // 2 + 7] = np.nan
    return a

def ints(n):
    return np.arange(n, dtype=np.int64) % 1000 - 500

def grid(rows, cols, fortran):
    a = np.arange(rows * cols, dtype=float).reshape(rows, cols) % 97
    a[3, 5:40] = np.nan
    return np.asfortranarray(a) if fortran else a
'''


def stored(tmp_path: Path, task: str, args: list[Any]) -> tuple[str, Any]:
    """Run a one-task workflow here (its value kept in the local store): (Results id, the
    value as the task returned it)."""
    folder = make_folder(tmp_path / "wf", module="chartfuncs", source=VALUES)
    work = tmp_path / "run"
    work.mkdir(exist_ok=True)
    flow = caliber.Workflow(caliber.Process([caliber.Task(f"chartfuncs:{task}", name="v",
                                                          args=args)]),
                            "charts", attachments=["chartfuncs.py"], base_dir=folder)
    results = flow.run(work_dir=work)
    assert arrays.is_ref(results.tasks[0].return_), results.tasks[0].return_
    return results.id, results["v"]


# --- the reductions as they were, on the whole array (the reference) ------------------------

def whole_line(array: Any) -> list[tuple[float, float]]:
    flat = np.asarray(array, dtype=float).ravel()
    if flat.size <= charts.LINE_POINTS:
        return [(float(v), float(v)) for v in flat]
    edges = np.linspace(0, flat.size, charts.LINE_POINTS + 1).astype(int)
    lows = np.minimum.reduceat(flat, edges[:-1])
    highs = np.maximum.reduceat(flat, edges[:-1])
    return [(float(a), float(b)) for a, b in zip(lows, highs, strict=True)]


def whole_grid(array: Any) -> Any:
    data_ = np.asarray(array, dtype=float)
    rows, cols = data_.shape
    fr, fc = math.ceil(rows / charts.HEAT_CELLS), math.ceil(cols / charts.HEAT_CELLS)
    padded = np.pad(data_, ((0, (-rows) % fr), (0, (-cols) % fc)), constant_values=np.nan)
    with warnings.catch_warnings():  # a block of NaN alone: "Mean of empty slice"
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(padded.reshape(padded.shape[0] // fr, fr, padded.shape[1] // fc, fc),
                          axis=(1, 3))


def reduced(results_id: str, reduce: Any) -> Any:
    """``reduce`` of task 0's stored array, read from the local store slice by slice; and
    whether it came in Fortran order."""
    ref = caliber.get_results(results_id=results_id).tasks[0].return_
    with open_backend(local_target()) as backend, backend.open_blob(ref["sha256"]) as stream:
        reader = arrays.ArrayReader(stream, ref, "v", check=True)
        return reduce(reader), reader.fortran


@pytest.mark.parametrize("task,args", [("line", [100_003]), ("ints", [70_001]),
                                       ("line", [9_000])])
def test_a_line_read_slice_by_slice_is_the_whole_arrays_line(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, task: str, args: list[Any]) -> None:
    monkeypatch.setattr(arrays, "READ_SLICE", 4096 + 8)  # many slices, edges inside them
    results_id, value = stored(tmp_path, task, args)
    got, _ = reduced(results_id, charts._line_of)
    assert got[1] == value.size
    assert np.array_equal(np.array(got[0]), np.array(whole_line(value)), equal_nan=True)
    drawn = data.chart(local_target(), results_id, "task:0")
    assert drawn == charts.svg(value, "v") and "<polyline" in (drawn or "")
    assert "1e+06" in (drawn or "") or task == "ints"  # the spike is the maximum


@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("shape", [(250, 370), (90, 50)])
def test_a_heat_map_read_slice_by_slice_is_the_whole_arrays(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fortran: bool,
        shape: tuple[int, int]) -> None:
    monkeypatch.setattr(arrays, "READ_SLICE", 8192)
    monkeypatch.setenv("CALIBER_ARRAY_INLINE_MAX", "1000")
    results_id, value = stored(tmp_path, "grid", [*shape, fortran])
    assert value.flags.f_contiguous == fortran
    (grid, n), in_fortran = reduced(results_id, charts._grid_of)
    assert in_fortran == fortran
    assert n == value.size
    assert np.allclose(np.array(grid), whole_grid(value), equal_nan=True, rtol=1e-12)
    drawn = data.chart(local_target(), results_id, "task:0")
    assert drawn is not None and 'class="heatmap"' in drawn


def test_the_results_page_summarises_a_stored_array_slice_by_slice(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(arrays, "READ_SLICE", 4096)
    results_id, value = stored(tmp_path, "ints", [70_001])
    page = data.results(local_target(), results_id)
    assert page["tasks"][0]["chart"] == "line"
    assert page["tasks"][0]["value"] == describe(value)


def test_a_damaged_stored_array_is_refused_not_drawn(tmp_path: Path) -> None:
    results_id, _ = stored(tmp_path, "line", [100_003])
    ref = caliber.get_results(results_id=results_id).tasks[0].return_
    with open_backend(local_target()) as backend:
        blob = backend.blobs.path(ref["sha256"])
    assert blob.is_file()
    os.chmod(blob, 0o600)
    with open(blob, "r+b") as f:  # one number changed, the size kept: the seal is broken
        f.seek(ref["size"] - 8)
        f.write(np.float64(123.0).tobytes())
    with pytest.raises(BlobMismatchError, match="damaged"):
        data.chart(local_target(), results_id, "task:0")
    with pytest.raises(BlobMismatchError, match="damaged"):
        data.results(local_target(), results_id)


# --- memory: 10**7 float64 -------------------------------------------------------------------

# The reader runs as the child of a small wrapper, which reports its peak: a child started
# straight from pytest starts its ru_maxrss at pytest's own high-water mark.
WRAPPER = ("import resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[1:]).returncode\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)\n")
PLOT = ("import sys\n"
        "from caliber.dashboard import data\n"
        "from caliber.queue.target import local_target\n"
        "drawn = data.chart(local_target(), sys.argv[1], 'task:0')\n"
        "page = data.results(local_target(), sys.argv[1])\n"
        "assert drawn and '<polyline' in drawn and page['tasks'][0]['chart'] == 'line'\n")


def peak_of_plot(results_id: str) -> int:
    """Peak resident bytes of a process that draws task 0's plot and the results page."""
    done = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-c", PLOT,
                           results_id], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stderr.split()[-1]) * 1024  # KiB on Linux


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB: Linux")
def test_a_plot_of_ten_million_floats_costs_a_slice_not_the_array(tmp_path: Path) -> None:
    """The same plot and page of 10**7 float64 (80 MB) and of 10**4: peak memory within
    24 MB of each other (read whole, the big one cost 80 MB more)."""
    small, _ = stored(tmp_path / "small", "line", [10**4])
    big, _ = stored(tmp_path / "big", "line", [10**7])
    peaks = {n: peak_of_plot(rid) for n, rid in ((10**4, small), (10**7, big))}
    print("peak RSS (MB):", {n: round(p / 1e6, 1) for n, p in peaks.items()})
    assert peaks[10**7] - peaks[10**4] < 24e6, peaks
