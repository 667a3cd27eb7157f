"""Heavy attachments (issue 21): queuing a big file, and ``caliber queue list`` beside it.

- ``caliber workflow queue`` of a workflow attaching one big file (1 GiB; quick: 64 MiB)
  against the floor of what it must do, on the same disk: ``cp`` of the file and
  ``sha256sum`` of it (one copy into the store, one hash). Its peak memory against the same
  command queuing a tiny file: bounded by a constant, not by the file.
- ``caliber queue list`` with 17 workloads each attaching that file against 17 attaching a
  tiny one: time and peak memory (the list never reads attachment bytes).

Peak memory is the ``ru_maxrss`` of the command's process, as a small wrapper sees it. Each
figure is a fresh process as a user types it; the file is in the page cache for both sides (it was
just written), so the figures compare work, not cold reads.

``python -m bench.heavy_attachments [--quick]`` prints the figures alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.common import BIN, worker_env
from bench.report import Row

FULL_SIZE = 1 << 30  # bytes of the big attachment
QUICK_SIZE = 64 << 20
COPIES = 17  # workloads attaching the same file, for `queue list`
SECTION = "Heavy attachments: stored once, by content"


def expected_ids() -> list[str]:
    return ["heavy-queue-time", "heavy-queue-memory", "heavy-list-time", "heavy-list-memory"]


# The command runs as the child of a small wrapper that reports its peak: a process forked
# (or vforked) straight from this one would start its ru_maxrss at this process's own
# high-water mark (hundreds of MB once the suite has run), not at its own.
PEAK_WRAPPER = ("import resource, subprocess, sys\n"
                "code = subprocess.run(sys.argv[1:]).returncode\n"
                "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
                "sys.exit(code)\n")


def measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run ``cmd``; its wall seconds and peak resident memory (MiB) of its process (and of
    any it waited for)."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", PEAK_WRAPPER, *cmd], env=env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=False)
    seconds = time.perf_counter() - start
    err = proc.stderr.decode()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed: {err.strip()[-300:]}")
    kib = int(err.split()[-1]) / (1024 if sys.platform == "darwin" else 1)
    return seconds, kib / 1024


def write_file(path: Path, size: int) -> None:
    """``size`` bytes that do not compress, in 16 MiB pieces."""
    piece = os.urandom(16 << 20)
    with open(path, "wb") as f:
        left = size
        while left > 0:
            f.write(piece[:left])
            left -= len(piece)


def workflow_file(folder: Path, attachment: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "heavy.json"
    path.write_text(json.dumps({
        "caliber": 1, "name": "heavy", "attachments": [attachment],
        "process": {"type": "process", "tasks": [
            {"type": "task", "name": "solve", "function": "solver:solve", "args": [attachment]}]},
    }))
    return path


def measure(size: int, reps: int, root: Path) -> dict[str, list[float]]:
    """The samples of every figure (rounds interleaved: subject, then its floor)."""
    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    big = data / "mesh.bin"
    write_file(big, size)
    big_wf, tiny_wf = workflow_file(data, "mesh.bin"), workflow_file(data / "t", "tiny.bin")
    (data / "t" / "tiny.bin").write_text("tiny\n")
    out: dict[str, list[float]] = {k: [] for k in (
        "queue", "floor", "queue_mib", "tiny_queue_mib", "list_big", "list_tiny",
        "list_big_mib", "list_tiny_mib")}
    caliber = str(BIN / "caliber")
    for rep in range(reps):
        big_home, tiny_home = root / f"big-{rep}", root / f"tiny-{rep}"
        for home in (big_home, tiny_home):
            shutil.rmtree(home, ignore_errors=True)
        env_big = worker_env(CALIBER_HOME=str(big_home))
        env_tiny = worker_env(CALIBER_HOME=str(tiny_home))
        seconds, mib = measured([caliber, "workflow", "queue", str(big_wf), "-p", "bench"],
                                env_big)
        out["queue"].append(seconds)
        out["queue_mib"].append(mib)
        copy = data / "copy.bin"
        start = time.perf_counter()
        subprocess.run(["cp", str(big), str(copy)], check=True)
        subprocess.run(["sha256sum", str(big)], check=True, stdout=subprocess.DEVNULL)
        out["floor"].append(time.perf_counter() - start)
        copy.unlink()
        _s, mib = measured([caliber, "workflow", "queue", str(tiny_wf),
                            "-p", "bench"], env_tiny)
        out["tiny_queue_mib"].append(mib)
        for _ in range(COPIES - 1):  # 17 in all: the same file, stored once
            measured([caliber, "workflow", "queue", str(big_wf), "-p", "bench"], env_big)
            measured([caliber, "workflow", "queue", str(tiny_wf), "-p",
                      "bench"], env_tiny)
        for key, env in (("big", env_big), ("tiny", env_tiny)):
            seconds, mib = measured([caliber, "queue", "list"], env)
            out[f"list_{key}"].append(seconds)
            out[f"list_{key}_mib"].append(mib)
        for home in (big_home, tiny_home):
            shutil.rmtree(home, ignore_errors=True)
    return out


def rows(quick: bool, reps: int, root: Path) -> list[Row]:
    size = QUICK_SIZE if quick else FULL_SIZE
    label = f"{size >> 20:,} MiB" if size < 1 << 30 else f"{size >> 30} GiB"
    try:
        got = measure(size, reps, root / "heavy-attachments")
        error = None
    except Exception as exc:  # a figure that cannot be measured here says why
        got, error = {}, f"{type(exc).__name__}: {exc}"
    specs = [
        ("heavy-queue-time", f"`caliber workflow queue` of a {label} attachment", "s",
         "cp + sha256sum of the file", "queue", "floor", "<= 2", 2.0),
        ("heavy-queue-memory", f"peak memory of `caliber workflow queue`, {label} attachment",
         "MiB", "the same with a 5-byte attachment", "queue_mib", "tiny_queue_mib", "<= 1.5",
         1.5),
        ("heavy-list-time", f"`caliber queue list`, {COPIES} workloads of a {label} attachment",
         "s", f"the same with {COPIES} of a 5-byte one", "list_big", "list_tiny", "<= 2", 2.0),
        ("heavy-list-memory", f"peak memory of `caliber queue list`, {COPIES} workloads of a "
         f"{label} attachment", "MiB", f"the same with {COPIES} of a 5-byte one",
         "list_big_mib", "list_tiny_mib", "<= 1.5", 1.5),
    ]
    return spec_rows(SECTION, specs, got, error)


Spec = tuple[str, str, str, str, str, str, str, float]
"""id, figure, unit, baseline, key of Caliber's samples, key of the floor's, target, value."""


def spec_rows(section: str, specs: list[Spec], got: dict[str, list[float]],
              error: str | None) -> list[Row]:
    """The rows of ``specs`` (each "lower is better", at most its target ratio), filled from
    the samples ``got``; each marked unavailable with the first line of ``error``."""
    out = []
    for row_id, figure, unit, baseline, subject, floor, target, value in specs:
        row = Row(id=row_id, section=section, figure=figure, unit=unit, better="lower",
                  baseline=baseline, target=target, target_op="<=", target_value=value)
        row.fill(got.get(subject, []), got.get(floor, []))
        if error:
            row.unavailable = error.splitlines()[0]
        out.append(row)
    return out



def main(argv: list[str] | None = None) -> int:
    from bench.report import module_main

    return module_main("python -m bench.heavy_attachments", rows, argv, reps=1)


if __name__ == "__main__":
    sys.exit(main())
