"""Security, end to end: tampered workloads never run, bad attachment paths are refused at
queue time and again at run time, and the key file stays private."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import caliber
from caliber.errors import AttachmentError
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue import secret
from caliber.queue.blobs import FolderBlobStore
from caliber.queue.registry import open_backend
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.sqlite.schema import blob_folder
from caliber.queue.target import local_target
from caliber.queue.workload import Attachment, Workload
from tests.pinion_helpers import make_folder, workflow
from tests.reliability_figures import record
from tests.test_fuzz import run_cli

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX files and permissions")

SECFUNCS = '''
def touch(path, value=1):
    with open(path, "a") as f:
        f.write(f"{value}\\n")
    return value

def evil(path, value=1):
    with open(path, "a") as f:
        f.write("evil\\n")
    return "evil"
'''
EVIL_MODULE = SECFUNCS.replace('f.write(f"{value}\\n")', 'f.write("tampered\\n")')


def sql(db: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(db)
    with conn:
        conn.execute(statement, params)
    conn.close()


def set_body(db: Path, wid: str, change: Callable[[dict[str, object]], None]) -> None:
    conn = sqlite3.connect(db)
    body = json.loads(conn.execute("SELECT body FROM workloads WHERE id = ?", (wid,))
                      .fetchone()[0])
    change(body)
    with conn:
        conn.execute("UPDATE workloads SET body = ? WHERE id = ?", (json.dumps(body), wid))
    conn.close()


def _task(body: dict[str, object]) -> dict[str, object]:
    return body["workflow"]["process"]["tasks"][0]  # type: ignore[index,no-any-return]


def _attachment(body: dict[str, object]) -> dict[str, object]:
    return body["attachments"][0]  # type: ignore[index,no-any-return]


def _new_blob(db: Path, wid: str) -> None:
    """Another file in the store, and the workload's first attachment pointed at it."""
    ref = FolderBlobStore(blob_folder(db)).put_stream(io.BytesIO(EVIL_MODULE.encode()))

    def point(body: dict[str, object]) -> None:
        _attachment(body).update(sha256=ref.sha256, size=ref.size)

    set_body(db, wid, point)


def change_blob(db: Path, sha256: str, data: bytes) -> None:
    """A blob's bytes changed in the store, its name kept."""
    path = FolderBlobStore(blob_folder(db)).path(sha256)
    path.chmod(0o600)
    path.write_bytes(data)


TAMPERING: dict[str, Callable[[Path, str, str], None]] = {
    "an argument": lambda db, wid, _: set_body(
        db, wid, lambda b: _task(b)["args"].__setitem__(1, 666)),  # type: ignore[attr-defined]
    "a keyword argument": lambda db, wid, _: set_body(
        db, wid, lambda b: _task(b).__setitem__("kwargs", {"value": 7})),
    "the function name": lambda db, wid, _: set_body(
        db, wid, lambda b: _task(b).__setitem__("function", "secfuncs:evil")),
    "the workflow tree": lambda db, wid, _: set_body(
        db, wid, lambda b: b["workflow"]["process"]["tasks"].append(  # type: ignore[index]
            {"type": "task", "name": "more", "function": "secfuncs:evil", "args": ["x"]})),
    "an attached file and its hash": lambda db, wid, _: _new_blob(db, wid),
    "an attached file's path": lambda db, wid, _: set_body(
        db, wid, lambda b: _attachment(b).__setitem__("path", "other.py")),
    "an added attachment": lambda db, wid, _: set_body(
        db, wid, lambda b: b["attachments"].append(  # type: ignore[attr-defined]
            Attachment.from_bytes("sitecustomize.py", b"import os\n").model_dump())),
    "the pinion name": lambda db, wid, _: sql(
        db, "UPDATE workloads SET pinion = 'p' WHERE id = ?", wid),
    "the creation time": lambda db, wid, _: sql(
        db, "UPDATE workloads SET created_at = '2020-01-01T00:00:00.000000+00:00' WHERE id = ?",
        wid),
    "the run-secret (another workload's)": lambda db, wid, other: sql(
        db, "UPDATE workloads SET secret = (SELECT secret FROM workloads WHERE id = ?) "
        "WHERE id = ?", other, wid),
}


@pytest.mark.parametrize("what", list(TAMPERING))
def test_a_tampered_workload_never_runs_until_signed_again(
    tmp_path: Path, caliber_home: Path, what: str
) -> None:
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    marker = tmp_path / "ran.txt"
    pinion = "other" if what == "the pinion name" else "p"
    wid = workflow(folder, [("touch", [str(marker), 1])], module="secfuncs").queue(pinion=pinion)
    decoy = workflow(folder, [("touch", [str(tmp_path / "decoy.txt"), 2])],
                     module="secfuncs").queue(pinion="decoy")
    db = caliber_home / "caliber.db"
    TAMPERING[what](db, wid, decoy)

    code, out, _err = run_cli("queue", "list", "--json", "--pinion", "p")
    assert code == 0 and [(w["id"], w["secret_ok"]) for w in json.loads(out)] == [(wid, False)]
    with open_backend(local_target()) as backend:
        first = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        first.run()
        assert first.summary.ran == 0 and [i for i, _ in first.summary.skipped] == [wid]
        workload = backend.get(wid)
        assert workload.status == "queued" and workload.attempts == 0
        assert workload.secret_mismatch == first.key_id
        assert backend.claim("p", "again", 60, first.key_id) is None  # passed over from now on
    assert not marker.exists()

    code, _out, err = run_cli("queue", "resetsecret", wid)
    assert code == 0, err
    with open_backend(local_target()) as backend:
        again = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        again.run()
    assert again.summary.ran == 1  # re-signed after review: it runs, as it now is
    assert marker.exists() or caliber.get_results(wid).status == "failed"
    record(f"security.tampering.{what}", ran_before_resign=0, ran_after_resign=1)


def test_an_attached_file_changed_without_its_hash_cannot_be_signed(
    tmp_path: Path, caliber_home: Path
) -> None:
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    marker = tmp_path / "ran.txt"
    wid = workflow(folder, [("touch", [str(marker)])], module="secfuncs").queue(pinion="p")
    db = caliber_home / "caliber.db"
    with open_backend(local_target()) as backend:
        first = backend.get(wid).attachments[0]
    change_blob(db, first.sha256, EVIL_MODULE.encode())
    with open_backend(local_target()) as backend:
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        pinion.run()
        workload = backend.get(wid)
    assert not marker.exists() and pinion.summary.ran == 0
    assert [i for i, _ in pinion.summary.skipped] == [wid]
    assert workload.status == "queued" and workload.secret_mismatch == pinion.key_id
    assert "do not match its hash" in workload.history[-1].message
    code, _out, err = run_cli("queue", "resetsecret", wid)
    assert code in (1, 2) and "does not match its SHA-256" in err and "Traceback" not in err


# --- attachments -------------------------------------------------------------------------

BAD_PATHS = {
    "absolute": "/tmp/caliber-escape.py",
    "dot-dot": "../caliber-escape.py",
    "dot-dot inside": "sub/../../caliber-escape.py",
    "drive letter": "C:caliber-escape.py",
    "backslashes": "..\\caliber-escape.py",
    "reserved name": "con.py",
    "NUL byte": "a\x00b.py",
    "colon": "a:b.py",
    "trailing dot": "name.",
}


def _queue_with(folder: Path, name: str) -> None:
    caliber.Workflow(caliber.Process([caliber.Task("secfuncs:touch", args=["x"])]), "w",
                     attachments=[name], base_dir=folder).queue(pinion="p")


@pytest.mark.parametrize("name", list(BAD_PATHS.values()), ids=list(BAD_PATHS))
def test_bad_attachment_paths_are_refused_at_queue_time(tmp_path: Path, name: str) -> None:
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    with pytest.raises(AttachmentError):
        _queue_with(folder, name)
    document = {"caliber": 1, "name": "w", "attachments": [name], "process": {
        "type": "process", "tasks": [{"type": "task", "name": "t", "function": "secfuncs:touch"}]}}
    path = folder / "w.json"
    path.write_text(json.dumps(document))
    code, out, err = run_cli("workflow", "queue", str(path), "-p", "p")
    assert code == 2 and out == "" and "Traceback" not in err, err
    assert err.startswith("caliber: error: ") and "attachment" in err
    with open_backend(local_target()) as backend:
        assert backend.list_workloads() == []


@posix_only
@pytest.mark.parametrize("kind", ["link out", "link to a device", "fifo", "device",
                                  "fifo in a folder", "link out of a folder"])
def test_links_and_devices_are_refused_at_queue_time(tmp_path: Path, kind: str) -> None:
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    outside = tmp_path / "secret.txt"
    outside.write_text("my secrets")
    target = folder / "data.bin"
    if kind == "link out":
        target.symlink_to(outside)
    elif kind == "link to a device":
        target.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(target)  # reading it would hang forever
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("mknod needs root")
        os.mknod(target, stat.S_IFCHR | 0o600, os.makedev(1, 5))  # like /dev/zero
    else:  # a folder attachment: every file inside is checked as a file attachment is
        target.mkdir()
        (target / "ok.txt").write_text("fine")
        if kind == "fifo in a folder":
            os.mkfifo(target / "pipe")
        else:
            (target / "sub").mkdir()
            (target / "sub" / "out.txt").symlink_to(outside)
    with pytest.raises(AttachmentError, match=r"outside|not a regular file"):
        _queue_with(folder, "data.bin")
    document = {"caliber": 1, "name": "w", "attachments": ["data.bin"], "process": {
        "type": "process", "tasks": [{"type": "task", "name": "t", "function": "secfuncs:touch"}]}}
    (folder / "w.json").write_text(json.dumps(document))
    code, _out, err = run_cli("workflow", "queue", str(folder / "w.json"), "-p", "p")
    assert code == 2 and "Traceback" not in err
    assert "outside" in err or "not a regular file" in err, err


RUN_TIME_PATHS = {**BAD_PATHS, "too long for the disk": "x" * 300 + ".py",
                  "inside a file": "secfuncs.py/inner.py"}


@pytest.mark.parametrize("name", list(RUN_TIME_PATHS.values()), ids=list(RUN_TIME_PATHS))
def test_bad_attachment_paths_are_refused_again_at_run_time(tmp_path: Path, name: str) -> None:
    """A workload made by hand (or by another program) and signed with the right key: the
    pinion still refuses the path before it writes anything."""
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    marker = tmp_path / "ran.txt"
    good = workflow(folder, [("touch", [str(marker)])], module="secfuncs")
    workload = Workload(
        pinion="p", workflow=good.to_document(),
        attachments=[Attachment.from_bytes("secfuncs.py", SECFUNCS.encode()),
                     Attachment.from_bytes(name, b"print('escaped')\n")],
    )
    workload.secret = secret.sign(workload, secret.load_key())
    runs = tmp_path / "runs"
    with open_backend(local_target()) as backend:
        backend.put(workload)
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0, runs_dir=runs), backend)
        pinion.run()
        stored = backend.get(workload.id)
    assert pinion.summary.failed == 1
    assert stored.status == "failed" and "cannot prepare the working folder" in (
        stored.last_error or "")
    assert not marker.exists()
    assert not (tmp_path / "caliber-escape.py").exists()
    assert not Path("/tmp/caliber-escape.py").exists()
    written = [p for p in runs.rglob("*") if p.is_file()]
    assert all(runs in p.parents for p in written)
    record(f"security.attachment.{name[:20]!r}", refused_at_run_time=True)


# --- the key -----------------------------------------------------------------------------

@posix_only
def test_the_key_file_is_private_whatever_the_umask(tmp_path: Path, caliber_home: Path) -> None:
    code = ("import os; os.umask(0); from caliber.queue.secret import load_key; load_key()")
    subprocess.run([sys.executable, "-c", code], check=True)
    path = caliber_home / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@posix_only
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o644, 0o666, 0o700, 0o610])
def test_a_looser_key_file_is_refused_with_what_to_do(caliber_home: Path, mode: int) -> None:
    secret.load_key()
    path = caliber_home / "secret.key"
    os.chmod(path, mode)
    for argv in (["queue", "list"], ["pinion", "init", "p", "-a", "1", "-w", "0"]):
        code, _out, err = run_cli(*argv)
        expected = 0 if mode & 0o077 == 0 else 1
        assert code == expected, err
        if expected:
            assert f"chmod 600 {path}" in err and err.count("\n") == 1


@posix_only
def test_a_key_file_that_links_to_a_readable_file_is_refused(
    tmp_path: Path, caliber_home: Path
) -> None:
    shared = tmp_path / "shared.key"
    shared.write_text("k" * 64)
    os.chmod(shared, 0o644)
    caliber_home.mkdir(parents=True, exist_ok=True)
    (caliber_home / "secret.key").symlink_to(shared)
    code, _out, err = run_cli("queue", "list")
    assert code == 1 and "chmod 600" in err


def test_the_key_never_shows(caliber_home: Path, tmp_path: Path) -> None:
    key = secret.load_key().decode()
    folder = make_folder(tmp_path / "wf", "secfuncs", SECFUNCS)
    wid = workflow(folder, [("touch", [str(tmp_path / "m")])], module="secfuncs").queue(
        pinion="p")
    with open_backend(local_target()) as backend:
        Pinion(PinionConfig(name="p", attempts=1, wait=0), backend).run()
    seen = []
    for argv in (["queue", "list"], ["queue", "list", "--json"], ["queue", "view", wid],
                 ["queue", "view", wid, "--json"], ["results", "list", "--json"],
                 ["queue", "resetsecret", wid, "--json"]):
        _code, out, err = run_cli(*argv)
        seen.append(out + err)
    db = (caliber_home / "caliber.db").read_bytes()
    assert key not in "".join(seen) and key.encode() not in db
    with SQLiteBackend(caliber_home / "caliber.db"):
        pass
