"""A result of 10**7 float64 stored and read back through Caliber, against ``numpy.save`` and
``numpy.load`` of the same array on the same disk (issue 21; target: within 2x).

Caliber's side is what a pinion and its workload's process do with a task's big array, and
what a reader does to get it back, on a local queue in a temporary folder:

- store: the workload's process converts the value (:func:`caliber.results.convert.to_json`
  with a :class:`~caliber.results.arrays.ValueWriter`: its ``.npy`` written to the run's
  values folder and flushed to disk (``fsync``) while a second thread hashes the array's
  memory), the pinion moves the file into the queue's content store (a rename, its size and
  header checked) and stores the Results row that refers to it (the queue opened once, as
  a pinion has it open);
- read: ``caliber.get_results(results_id=...)["big"]``: the Results row, then the blob read
  into the array's own memory, its size and header checked (a sealed blob of the local
  store: its SHA-256 is not computed again, see :mod:`caliber.results.arrays`).

The floor: ``numpy.save`` to a file in the same folder (no ``fsync``: numpy does not), and
``numpy.load`` of it. A second floor adds what no store named by content can skip: the
SHA-256 of the same bytes (``hashlib.sha256`` of the array's memory, after ``numpy.save``).
Each round changes one number of the array first, so no round finds its blob stored
already; rounds alternate Caliber and numpy.

``python -m bench.run`` includes these rows; ``python -m bench.heavy_arrays [--quick]``
prints them alone.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.report import Row

FULL_SIZE = 10**7  # float64: 80 MB
QUICK_SIZE = 10**6
TARGET = 2.0  # the largest acceptable ratio to numpy's own save and load
SECTION = "Large results: arrays"


def expected_ids() -> list[str]:
    return [f"arrays-{kind}" for kind in ("store", "read", "roundtrip", "store-hashed",
                                          "roundtrip-hashed")]


def measure(size: int, reps: int, root: Path) -> dict[str, list[float]]:
    """Seconds per round: Caliber's store and read, numpy's save and load, and the SHA-256
    of the array's bytes."""
    import hashlib

    import numpy as np

    import caliber
    from caliber.queue.registry import open_backend
    from caliber.queue.target import QueueTarget
    from caliber.results.arrays import VALUES_DIR, ValueWriter, put_values
    from caliber.results.convert import to_json
    from caliber.results.model import Results, RunStatus, TaskResult, TaskStatus, utcnow

    database = root / "arrays" / "caliber.db"
    database.parent.mkdir(parents=True, exist_ok=True)
    target = QueueTarget(kind="sqlite", location=str(database), settings=database)
    run_folder = root / "arrays" / "run"
    run_folder.mkdir(exist_ok=True)
    floor_file = root / "arrays" / "floor.npy"
    array = np.random.default_rng(0).random(size)
    times: dict[str, list[float]] = {k: [] for k in ("store", "read", "save", "load", "sha")}
    backend = open_backend(target)  # a pinion keeps its queue open
    for round_ in range(reps):
        array[0] = round_  # a new blob each round
        _touch(np, size)
        start = time.perf_counter()
        writer = ValueWriter(run_folder / VALUES_DIR, 64 * 1024)
        ref, _ = to_json(array, writer)
        now = utcnow()
        results = Results(workflow="bench", status=RunStatus.COMPLETED, started_at=now,
                          finished_at=now, tasks=[TaskResult(
                              name="big", status=TaskStatus.COMPLETED, return_=ref)])
        problem = put_values(backend, run_folder / VALUES_DIR, writer.written)
        backend.save_results(results)
        assert problem is None, problem
        times["store"].append(time.perf_counter() - start)

        _touch(np, size)
        start = time.perf_counter()
        np.save(floor_file, array)
        times["save"].append(time.perf_counter() - start)

        start = time.perf_counter()
        hashlib.sha256(array.data).hexdigest()
        times["sha"].append(time.perf_counter() - start)

        _touch(np, size)
        start = time.perf_counter()
        back = caliber.get_results(results_id=results.id, target=target)["big"]
        times["read"].append(time.perf_counter() - start)
        assert back.dtype == array.dtype and np.array_equal(back, array)
        del back

        _touch(np, size)
        start = time.perf_counter()
        loaded = np.load(floor_file)
        times["load"].append(time.perf_counter() - start)
        del loaded
        floor_file.unlink()
    backend.close()
    return times


def _touch(np: Any, size: int) -> None:
    """Make and drop an array as big as the measured one, before each timed step on either
    side, so that every step finds the same memory just freed. On the reference machine (a
    virtual machine that hands memory freed a few seconds ago back to its host) memory not
    touched lately costs about 0.2 s per 80 MB the first time, and which side met it
    depended on the order of the steps: ``numpy.load`` measured 17 ms after a step that
    freed memory and 330 ms after one that only filled the file cache."""
    np.ones(size)


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    size = QUICK_SIZE if quick else FULL_SIZE
    error = None
    try:
        times = measure(size, reps, root)
    except ImportError as exc:  # numpy is in the dev extra
        times, error = {}, f"needs numpy ({exc})"
    what = f"a result of {size:,} float64 ({size * 8 / 1e6:.0f} MB)"
    both = [s + r for s, r in zip(times.get("store", []), times.get("read", []), strict=True)]
    floor = [s + r for s, r in zip(times.get("save", []), times.get("load", []), strict=True)]
    hashed = [s + h for s, h in zip(times.get("save", []), times.get("sha", []), strict=True)]
    hashed_both = [s + r for s, r in zip(hashed, times.get("load", []), strict=True)]
    out = []
    for kind, figure, subject, baseline, base_name in (
        ("store", f"{what} stored", times.get("store", []), times.get("save", []),
         "numpy.save"),
        ("read", f"{what} read back (get_results)", times.get("read", []),
         times.get("load", []), "numpy.load"),
        ("roundtrip", f"{what} stored and read back", both, floor,
         "numpy.save + numpy.load"),
        ("store-hashed", f"{what} stored", times.get("store", []), hashed,
         "numpy.save + sha256 of the same bytes"),
        ("roundtrip-hashed", f"{what} stored and read back", both, hashed_both,
         "numpy.save + sha256 + numpy.load"),
    ):
        row = Row(id=f"arrays-{kind}", section=SECTION, figure=figure, unit="s",
                  better="lower", baseline=f"{base_name}, same disk",
                  target=f"<= {TARGET:g}", target_op="<=", target_value=TARGET)
        row.fill(subject, baseline)
        row.unavailable = error
        if kind == "store":
            row.note = ("hashed once (in the workload's process, on a second thread while the "
                        ".npy is written and fsync'd), then moved into the store by rename; "
                        "numpy.save neither hashes nor fsyncs: the SHA-256 alone of 80 MB "
                        "costs 2.5-4x numpy.save here (next rows)")
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.heavy_arrays",
                                     description="Big arrays through Caliber against numpy.")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_SIZE:,} floats")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="caliber-bench-arrays-", dir=".") as tmp:
        os.environ["CALIBER_HOME"] = str(Path(tmp) / "home")  # never the user's own
        for row in rows(args.quick, args.reps, Path(tmp)):
            _print(row)
    return 0


def _print(row: Row) -> None:
    def median(stats: dict[str, Any] | None) -> str:
        return "-" if stats is None else f"{stats['median']:.3f}"

    print(f"{row.id:18} caliber {median(row.subject_stats)} s  {row.baseline}: "
          f"{median(row.baseline_stats)} s  ratio {median(row.ratio_stats)}"
          + (f"  ({row.unavailable})" if row.unavailable else ""))


if __name__ == "__main__":
    raise SystemExit(main())
