"""A pinion's lease while it prepares a workload, and how soon it learns a cancel: real pinion
subprocesses on the local queue.

- While the pinion writes a big attachment into the run folder it renews its lease: a second
  pinion does not take the workload, and the first completes it. The slow attachment is real:
  an attachment by reference whose file on the "shared drive" is a FIFO that this test feeds
  slowly, as a slow network drive would deliver it (no test hook in Caliber).
- A lease lost while preparing (the pinion stopped with SIGSTOP past its lease, another claim
  taken) stops the preparation: the half-written run folder is removed and nothing runs.
- A cancel (with or without ``--now``) seen while preparing ends the workload cancelled without
  running it; a cold stop (Ctrl-C twice) puts it back in the queue.
- The same while a resumed run's earlier files and arrays are written back into its folder
  (the blob in the local store made a slow FIFO): the lease is renewed, a cancel is learnt.
- ``queue cancel --now`` of a task sleeping 600 s stops it with ``--lease 600``: the next
  renewal would come 200 s later, so only the pinion's look between renewals explains it.

No timing is asserted: the waits are bounds far below what the old behaviour would take.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import caliber
from caliber.pinion.follow import pinion_runs
from caliber.queue.registry import open_backend
from caliber.queue.secret import key_id, load_key
from caliber.queue.target import local_target
from tests.pinion_helpers import alive, start_pinion, status_of, stop, wait_for
from tests.test_stop import (
    WAIT,
    caliber_cli,
    make,
    new_marker,
    processes_with,
    results_of,
    solve_workflow,
)

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo") or not Path("/proc").is_dir(),
                                reason="needs FIFOs and /proc")

MIB = 1 << 20


class SlowDrive:
    """A file of ``size`` zero bytes on a slow "shared drive": queued as a regular file (its
    SHA-256 read then), then replaced by a FIFO that a thread feeds at ``MIB / pause`` bytes a
    second to whoever opens it, as a slow network drive would deliver it."""

    def __init__(self, path: Path, size: int, pause: float, content: bytes | None = None
                 ) -> None:
        """``content``: the bytes the FIFO gives (a file there already), else ``size``
        zero bytes, written there now."""
        self.path, self.size, self.pause = path, size, pause
        self.content = content if content is not None else bytes(size)
        if content is None:
            path.write_bytes(self.content)
        self.opened = threading.Event()
        self.fed = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Make the file a FIFO and feed it (once) from a thread."""
        self.path.unlink()
        os.mkfifo(self.path, 0o600)
        self._thread = threading.Thread(target=self._feed, daemon=True)
        self._thread.start()

    def _feed(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY)  # until the pinion opens it to read
            self.opened.set()
            try:
                while self.fed < self.size:
                    self.fed += os.write(fd, self.content[self.fed:self.fed + 64 * 1024])
                    if self.fed % MIB == 0:
                        time.sleep(self.pause)
            finally:
                os.close(fd)
        except OSError as exc:  # the reader went away (EPIPE): the pinion stopped reading
            if exc.errno != errno.EPIPE:
                raise

    def close(self) -> None:
        """Unblock the feeder if nobody opened the FIFO, and wait for it."""
        if self._thread is None:
            return
        with contextlib.suppress(OSError):
            os.close(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK))
        self._thread.join(timeout=60)


@pytest.fixture
def drive(tmp_path: Path) -> Iterator[SlowDrive]:
    """A 12 MiB file fed at about 2 MiB a second: about 6 s to read, longer than a 3 s
    lease (the pinion reads it 1 MiB at a time, so it can renew every half second)."""
    share = tmp_path / "share"
    share.mkdir()
    made = SlowDrive(share / "mesh.bin", 12 * MIB, 0.5)
    yield made
    made.close()


def slow_workflow(folder: Path, drive: SlowDrive) -> caliber.Workflow:
    """One quick task, with the slow file attached by reference."""
    return caliber.Workflow(caliber.Process([caliber.Task("solver:first", args=[str(folder)])]),
                            "solve", attachments=["solver.py", caliber.Reference(str(drive.path))],
                            base_dir=folder)


def summary_of(pinion_out: str) -> dict[str, object]:
    summary = json.loads(pinion_out)
    assert isinstance(summary, dict)
    return summary


def run_folder(wid: str, attempt: int = 1) -> Path:
    return pinion_runs("p", None) / f"{wid}-{attempt}"


def history_of(wid: str) -> list[str]:
    with open_backend(local_target()) as backend:
        return [h.message for h in backend.get(wid).history]


@needs_fifo
def test_a_second_pinion_does_not_take_a_workload_whose_attachment_is_slow(
        tmp_path: Path, drive: SlowDrive) -> None:
    folder = make(tmp_path)
    wid = slow_workflow(folder, drive).queue(pinion="p")
    drive.start()
    first = start_pinion("p", "-a", "1", "-w", "0", "--lease", "3", "--json")
    second = None
    try:
        assert drive.opened.wait(WAIT), "the first pinion never read the attachment"
        second = start_pinion("p", "--forever", "-w", "0.1", "--lease", "3", "--json")
        out, err = first.communicate(timeout=WAIT)
        assert first.returncode == 0, err
        assert drive.fed == drive.size  # it read the whole file: its preparation outlived
        # more than one lease, and the second pinion looked all along
        assert second.poll() is None
        second.send_signal(signal.SIGINT)  # a warm stop: it prints its summary
        second_out, _ = second.communicate(timeout=WAIT)
    finally:
        stop(first)
        if second is not None:
            stop(second)
    assert summary_of(out)["completed"] == 1
    assert summary_of(second_out)["ran"] == 0 and summary_of(second_out)["lost"] == 0
    assert status_of(wid) == "completed"
    claims = [m for m in history_of(wid) if m.startswith("claimed by")]
    assert len(claims) == 1, history_of(wid)
    assert results_of(wid)["first"] == {"nodes": 90000}


@needs_fifo
def test_a_lease_lost_while_preparing_stops_it_and_removes_the_run_folder(
        tmp_path: Path, drive: SlowDrive) -> None:
    folder = make(tmp_path)
    wid = slow_workflow(folder, drive).queue(pinion="p")
    drive.start()
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "1", "--json")
    try:
        assert drive.opened.wait(WAIT), "the pinion never read the attachment"
        wait_for(lambda: drive.fed >= 2 * MIB, timeout=WAIT, what="the pinion to read on")
        os.kill(pinion.pid, signal.SIGSTOP)  # past its lease: another pinion takes it

        def taken() -> bool:
            with open_backend(local_target()) as backend:
                return backend.claim("p", "other@elsewhere:1", 600,
                                     key_id(load_key())) is not None

        wait_for(taken, timeout=WAIT, what="the lease to run out and be taken")
        os.kill(pinion.pid, signal.SIGCONT)
        out, err = pinion.communicate(timeout=WAIT)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pinion.pid, signal.SIGCONT)
        stop(pinion)
    assert pinion.returncode == 0, err
    summary = summary_of(out)
    assert summary["lost"] == 1 and summary["ran"] == 0
    lines = [line for line in err.splitlines() if "lease lost while its attachments" in line]
    assert len(lines) == 1, err
    assert "not run, its run folder removed" in lines[0]
    assert not run_folder(wid).exists()  # the half-written folder is gone
    assert drive.fed < drive.size  # it stopped reading
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.status.value == "running"  # the other claim's, untouched
    assert workload.lease is not None and workload.lease.owner == "other@elsewhere:1"


@needs_fifo
@pytest.mark.parametrize("now", [False, True])
def test_a_cancel_while_preparing_ends_it_cancelled_without_running(
        tmp_path: Path, now: bool) -> None:
    folder = make(tmp_path)
    share = tmp_path / "share"
    share.mkdir()
    drive = SlowDrive(share / "mesh.bin", 64 * MIB, 0.5)  # 32 s to read it all
    try:
        wid = slow_workflow(folder, drive).queue(pinion="p")
        drive.start()
        # a lease of 600 s: a renewal would come 200 s later; only the look between renewals
        # can learn the cancel before the file is read
        pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "600", "--json")
        try:
            assert drive.opened.wait(WAIT), "the pinion never read the attachment"
            caliber_cli("queue", "cancel", wid, *(["--now"] if now else []))
            out, err = pinion.communicate(timeout=WAIT)
        finally:
            stop(pinion)
    finally:
        drive.close()
    assert pinion.returncode == 0, err
    assert drive.fed < drive.size  # stopped before the file was read
    assert summary_of(out)["cancelled"] == 1
    assert status_of(wid) == "cancelled"
    assert not run_folder(wid).exists()
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.results_id is None  # never run: no Results, as a queued one cancelled
    assert workload.attempts == 0  # the attempt is not counted: `queue retry` runs it
    messages = [h.message for h in workload.history]
    assert any("while its attachments were written; never run" in m for m in messages)
    assert "cancelled" in err and "never run" in err


@needs_fifo
def test_a_cold_stop_while_preparing_puts_the_workload_back(
        tmp_path: Path, drive: SlowDrive) -> None:
    folder = make(tmp_path)
    wid = slow_workflow(folder, drive).queue(pinion="p")
    drive.start()
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "600")
    try:
        assert drive.opened.wait(WAIT), "the pinion never read the attachment"
        pinion.send_signal(signal.SIGINT)
        time.sleep(0.5)  # two presses, not one signal delivered once
        pinion.send_signal(signal.SIGINT)  # twice: stop now
        _out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    assert pinion.returncode == 130, err
    assert drive.fed < drive.size
    with open_backend(local_target()) as backend:
        workload = backend.get(wid)
    assert workload.status.value == "queued" and workload.attempts == 0
    assert not run_folder(wid).exists()
    assert "put back in the queue" in err


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(entry))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_local_cancel_now_stops_the_task_between_renewals(tmp_path: Path) -> None:
    """With ``--lease 600`` the pinion's next renewal comes 200 s after the start: the task
    (600 s of ``sleep`` in a subprocess) is stopped long before, by the look between
    renewals."""
    folder = make(tmp_path)
    marker = new_marker()
    wid = solve_workflow(folder, "subprocess", marker).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "600")
    try:
        wait_for(lambda: processes_with(marker), what="the solver's process")
        child = int((folder / "solve-started").read_text())
        group = os.getpgid(child)
        assert group_members(group)
        caliber_cli("queue", "cancel", wid, "--now")
        wait_for(lambda: status_of(wid) == "cancelled", timeout=WAIT,
                 what="the workload to be cancelled")
        assert group_members(group) == []  # stopped before the workload was ended
        _out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
    results = results_of(wid)
    assert results.status.value == "cancelled"
    assert [(t.name, t.status.value) for t in results.tasks] == [
        ("first", "completed"), ("solve", "failed"), ("after", "skipped")]
    assert results["first"] == {"nodes": 90000} and results.g == {"mesh": "fine"}
    assert results.error is not None and results.error.type == "Cancelled"
    assert not alive(child) and processes_with(marker) == []
    assert "stopping the running task now" in err


# --- a resumed run's earlier files and arrays, written back slowly ---------------------------

RESUMED = """
from pathlib import Path


def mesh(size, array):
    if array:
        import numpy as np
        return np.zeros(size // 8)
    with open("mesh.bin", "wb") as f:
        f.write(bytes(size))
    return size


def solve(made, folder):
    if not (Path(folder) / "fixed").exists():
        raise RuntimeError("diverged")
    return "solved"
"""


def failed_then_retried(tmp_path: Path, size: int, array: bool) -> tuple[str, Path]:
    """A workload whose first task keeps ``size`` bytes (a result file, or an array), whose
    second fails; run by a pinion, fixed, and put back with ``queue retry --resume``: its id,
    and the blob in the local store that the resumed run writes back first."""
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "meshing.py").write_text(RESUMED)
    mesh = caliber.Task("meshing:mesh", name="mesh", args=[size, array])
    solve = caliber.Task("meshing:solve", name="solve", args=[mesh.result, str(folder)])
    wid = caliber.Workflow(caliber.Process([mesh, solve]), "resumed",
                           attachments=["meshing.py"], base_dir=folder,
                           outputs=["*.bin"]).queue(pinion="p")
    caliber_cli("pinion", "init", "p", "-a", "1", "-w", "0", "-q")
    first = results_of(wid)
    assert first.status.value == "failed", first.error
    sha = (first.tasks[0].return_["sha256"] if array else
           next(f.sha256 for f in first.files if f.path == "mesh.bin"))
    (folder / "fixed").touch()
    caliber_cli("queue", "retry", wid, "--resume")
    with open_backend(local_target()) as backend:
        return wid, backend.blobs.path(sha)


@needs_fifo
@pytest.mark.parametrize("array", [False, True], ids=["file", "array"])
def test_a_second_pinion_does_not_take_a_resumed_run_whose_files_come_slowly(
        tmp_path: Path, array: bool) -> None:
    wid, blob = failed_then_retried(tmp_path, 12 * MIB, array)
    content = blob.read_bytes()
    drive = SlowDrive(blob, len(content), 0.5, content)  # about 6 s, a lease of 3 s
    drive.start()
    first = start_pinion("p", "-a", "1", "-w", "0", "--lease", "3", "--json")
    second = None
    try:
        assert drive.opened.wait(WAIT), "the first pinion never read the earlier file"
        second = start_pinion("p", "--forever", "-w", "0.1", "--lease", "3", "--json")
        out, err = first.communicate(timeout=WAIT)
        assert first.returncode == 0, err
        assert drive.fed == drive.size
        assert second.poll() is None
        second.send_signal(signal.SIGINT)
        second_out, _ = second.communicate(timeout=WAIT)
    finally:
        stop(first)
        if second is not None:
            stop(second)
        drive.close()
    assert summary_of(out)["completed"] == 1, err
    assert summary_of(second_out)["ran"] == 0 and summary_of(second_out)["lost"] == 0
    assert status_of(wid) == "completed"
    claims = [m for m in history_of(wid) if m.startswith("claimed by")]
    assert len(claims) == 2, history_of(wid)  # the failed run's, and the resumed one's
    resumed = results_of(wid)
    assert resumed.tasks[0].reused_from is not None and resumed["solve"] == "solved"


@needs_fifo
def test_a_cancel_while_a_resumed_runs_files_are_written_back_ends_it_unrun(
        tmp_path: Path) -> None:
    wid, blob = failed_then_retried(tmp_path, 64 * MIB, False)
    content = blob.read_bytes()
    drive = SlowDrive(blob, len(content), 0.5, content)  # 32 s to read it all
    drive.start()
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "600", "--json")
    try:
        assert drive.opened.wait(WAIT), "the pinion never read the earlier file"
        caliber_cli("queue", "cancel", wid)
        out, err = pinion.communicate(timeout=WAIT)
    finally:
        stop(pinion)
        drive.close()
    assert pinion.returncode == 0, err
    assert drive.fed < drive.size  # stopped before the file was read
    assert summary_of(out)["cancelled"] == 1
    assert status_of(wid) == "cancelled"
    assert not run_folder(wid, 2).exists()
    assert any("while its earlier run's files were written back; never run" in m
               for m in history_of(wid))
