"""Result files (``outputs=``): keeping one big file a run wrote, and bringing it back.

- collect: :func:`caliber.results.files.keep_outputs` of one file of ``size`` MiB from a run
  folder into the local queue's content store (what a pinion does when a run ends: found by
  its glob, opened without following links, streamed through SHA-256 into the store, fsync'd)
  against the floor of the same work by hand: ``cp`` of the file into the same folder, then
  ``sha256sum`` of it;
- fetch: ``Results.save_files`` of it into a new folder (what ``caliber results files ID --to
  DIR`` does: streamed from the store and checked against its SHA-256) against ``cp`` +
  ``sha256sum``.

Same disk, same file; the page cache is warm for both sides (the file was just written).
``python -m bench.run`` includes these rows; ``python -m bench.heavy_outputs [--quick]``
prints them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from bench.report import Row

FULL_MIB = 300
QUICK_MIB = 20
TARGET = 2.0  # at most this many times the floor


def expected_ids() -> list[str]:
    return ["outputs-collect", "outputs-fetch"]


def _write(path: Path, mib: int) -> None:
    chunk = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(mib):
            f.write(chunk[:-4] + i.to_bytes(4, "big"))


def _floor(source: Path, dest: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(["cp", str(source), str(dest)], check=True)
    subprocess.run(["sha256sum", str(dest)], check=True, stdout=subprocess.DEVNULL)
    elapsed = time.perf_counter() - t0
    dest.unlink()
    return elapsed


def measure(mib: int, reps: int, root: Path) -> dict[str, list[float]]:
    from caliber.queue.blobs import FolderBlobStore
    from caliber.results.files import OutputLimits, keep_outputs, save_files
    from caliber.results.model import ResultFile, Results, RunStatus, utcnow

    run = root / "run"
    (run / "fields").mkdir(parents=True)
    source = run / "fields" / "big.vtu"
    _write(source, mib)
    limits = OutputLimits(10**12, 10**12)
    out: dict[str, list[float]] = {k: [] for k in
                                   ("collect", "collect-floor", "fetch", "fetch-floor")}
    for rep in range(reps):
        store = FolderBlobStore(root / f"blobs-{rep}")  # a new store: the bytes are written
        t0 = time.perf_counter()
        kept = keep_outputs(store, run, ["fields/*.vtu"], limits)
        out["collect"].append(time.perf_counter() - t0)
        out["collect-floor"].append(_floor(source, root / "copy.vtu"))
        now = utcnow()
        results = Results(workflow="bench", status=RunStatus.COMPLETED, started_at=now,
                          finished_at=now, files=[ResultFile(**f) for f in kept["files"]])
        dest = root / f"back-{rep}"
        t0 = time.perf_counter()
        save_files(store, results, dest)
        out["fetch"].append(time.perf_counter() - t0)
        out["fetch-floor"].append(_floor(source, root / "copy.vtu"))
        shutil.rmtree(dest)
        shutil.rmtree(store.root)
    return out


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    """The result-file rows of the report (see :func:`expected_ids`)."""
    mib = QUICK_MIB if quick else FULL_MIB
    folder = root / "heavy-outputs"
    error = None
    try:
        figures = measure(mib, reps, folder)
    except (OSError, subprocess.CalledProcessError) as exc:
        figures, error = {}, f"{type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    out = []
    for name, figure, baseline in (
            ("collect", f"keep a {mib} MiB result file in the content store (outputs=)",
             "cp + sha256sum of it"),
            ("fetch", f"bring a {mib} MiB result file back (results files --to)",
             "cp + sha256sum of it")):
        row = Row(id=f"outputs-{name}", section="Large inputs and results", figure=figure,
                  unit="s", better="lower", baseline=baseline, target=f"<= {TARGET:g}x",
                  target_op="<=", target_value=TARGET)
        row.fill(figures.get(name, []), figures.get(f"{name}-floor", []))
        if error:
            row.unavailable = error
        out.append(row)
    return out



def main(argv: list[str] | None = None) -> int:
    from bench.report import module_main

    return module_main("python -m bench.heavy_outputs", rows, argv)


if __name__ == "__main__":
    raise SystemExit(main())
