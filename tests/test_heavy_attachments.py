"""Big attachments, as an engineer queues them: a file of a few hundred MB made here, queued
with ``caliber workflow queue`` 17 times and listed with ``caliber queue list``, each a real
process whose peak memory (``ru_maxrss``, as a small wrapper process sees it) stays far below
the file's size;
stored once; and written into a pinion's run folder by streaming, checked by its hash."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_attachments_store import FUNCS, blobs

SIZE = 300 << 20  # bytes of the big attachment
BOUND = 120 << 20  # peak memory every command stays under (bytes): well below SIZE

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    sys.platform != "linux", reason="ru_maxrss in KiB: Linux")]


# The command runs as the child of a small wrapper, which reports its peak: a child forked (or
# vforked) straight from pytest starts its ru_maxrss at pytest's own high-water mark, which
# earlier tests with big arrays raise to hundreds of MB.
WRAPPER = ("import resource, subprocess, sys\n"
           "code = subprocess.run(sys.argv[1:], stderr=subprocess.DEVNULL).returncode\n"
           "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
           "sys.exit(code)\n")


def peak(*args: str) -> tuple[str, int]:
    """Run ``caliber args``; (stdout, peak resident bytes of that process and its children)."""
    proc = subprocess.run([sys.executable, "-c", WRAPPER, sys.executable, "-m", "caliber", *args],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:]
    return proc.stdout, int(proc.stderr.split()[-1]) * 1024  # KiB on Linux


def big_file(path: Path) -> str:
    """``SIZE`` bytes that do not compress; their SHA-256."""
    digest = hashlib.sha256()
    piece = os.urandom(8 << 20)
    with open(path, "wb") as f:
        for i in range(SIZE // len(piece)):
            chunk = piece[:-8] + i.to_bytes(8, "big")
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


def workflow_file(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "attfuncs.py").write_text(FUNCS)
    path = folder / "solve.json"
    path.write_text(json.dumps({
        "caliber": 1, "name": "solve", "attachments": ["attfuncs.py", "model"],
        "process": {"type": "process", "tasks": [
            {"type": "task", "name": "check", "function": "attfuncs:digest",
             "args": ["model/mesh.bin"]}]}}))
    return path


def test_a_big_file_queued_17_times_is_stored_once_in_bounded_memory(
        tmp_path: Path, caliber_home: Path) -> None:
    wf = workflow_file(tmp_path / "wf")
    (tmp_path / "wf" / "model").mkdir()
    digest = big_file(tmp_path / "wf" / "model" / "mesh.bin")
    peaks = [peak("workflow", "queue", str(wf), "-p", "p", "--json")[1] for _ in range(17)]
    assert max(peaks) < BOUND, f"workflow queue peaked at {max(peaks) >> 20} MiB"
    assert digest in blobs(caliber_home) and len(blobs(caliber_home)) == 2
    assert (caliber_home / "caliber.db").stat().st_size < 1 << 20
    out, listed = peak("queue", "list", "--json")
    assert listed < BOUND, f"queue list peaked at {listed >> 20} MiB"
    assert [w["secret_ok"] for w in json.loads(out)] == [True] * 17
    wid = json.loads(out)[0]["id"]
    out, viewed = peak("queue", "view", wid, "--json")
    size = (tmp_path / "wf" / "model" / "mesh.bin").stat().st_size
    assert viewed < BOUND and json.loads(out)["attachments"][1]["size"] == size > 250 << 20


def test_a_pinion_writes_a_big_file_into_the_run_folder_by_streaming(
        tmp_path: Path, caliber_home: Path) -> None:
    wf = workflow_file(tmp_path / "wf")
    (tmp_path / "wf" / "model").mkdir()
    digest = big_file(tmp_path / "wf" / "model" / "mesh.bin")
    out, _ = peak("workflow", "queue", str(wf), "-p", "p", "--json")
    wid = json.loads(out)["id"]
    _out, pinion = peak("pinion", "init", "p", "-a", "1", "-w", "0")
    assert pinion < BOUND, f"the pinion peaked at {pinion >> 20} MiB"
    out, _ = peak("results", "show", wid, "--json")
    results = json.loads(out)
    assert results["status"] == "completed"
    assert results["tasks"][0]["return"] == digest  # the task read what was queued
