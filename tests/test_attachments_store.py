"""Attachments stored once, by content, as a user meets them: the same file queued 17 times is
one blob; prune and reset remove what nothing refers to any more and keep what is shared; a
folder arrives in the run folder with its paths and modes; an attachment by reference is
checked before the run; workloads of older queues (content in the row) are moved into the
store and still run."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import AttachmentError, WorkflowFileError
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue import secret
from caliber.queue.registry import open_backend
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.sqlite.schema import MIGRATIONS, PYTHON_STEPS, blob_folder
from caliber.queue.target import local_target
from caliber.queue.workload import Attachment, Workload
from caliber.results.model import utcnow
from caliber.workflow.fileformat import json_schema
from tests.test_fuzz import run_cli

PYTHON_STEPS_FROM = min(PYTHON_STEPS)  # the migration that moves attachments into the store
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX modes and links")

FUNCS = '''
import hashlib
import os


def listing(folder):
    """Every file under folder: [sha256, executable, a link]."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, folder).replace(os.sep, "/")] = [
                digest, bool(os.stat(path).st_mode & 0o100), os.path.islink(path)]
    return out


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
'''


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "wf"
    folder.mkdir()
    (folder / "attfuncs.py").write_text(FUNCS)
    return folder


def workflow(folder: Path, attachments: list[Any], task: str = "listing",
             args: list[Any] | None = None) -> caliber.Workflow:
    return caliber.Workflow(
        caliber.Process([caliber.Task(f"attfuncs:{task}", name="look", args=args or ["."])]),
        "att", attachments=["attfuncs.py", *attachments], base_dir=folder)


def run_pinion() -> Pinion:
    with open_backend(local_target()) as backend:
        pinion = Pinion(PinionConfig(name="p", attempts=1, wait=0), backend)
        pinion.run()
    return pinion


def blobs(caliber_home: Path) -> list[str]:
    root = blob_folder(caliber_home / "caliber.db")
    return sorted(p.name for p in root.glob("??/*"))


def returned(wid: str) -> Any:
    results = caliber.get_results(wid)
    assert results.status == "completed", results.error
    return results.tasks[0].return_


# --- stored once ------------------------------------------------------------------------


def test_the_same_file_queued_17_times_is_stored_once(tmp_path: Path, caliber_home: Path) -> None:
    folder = make_folder(tmp_path)
    mesh = os.urandom(300_000)
    (folder / "mesh.bin").write_bytes(mesh)
    ids = [workflow(folder, ["mesh.bin"]).queue(pinion="p") for _ in range(17)]
    assert blobs(caliber_home) == sorted([sha(mesh), sha(FUNCS.encode())])
    body = sqlite3.connect(caliber_home / "caliber.db").execute(
        "SELECT body FROM workloads WHERE id = ?", (ids[0],)).fetchone()[0]
    assert len(body) < 4000 and "content" not in json.loads(body)["attachments"][1]
    code, out, err = run_cli("queue", "view", ids[0], "--json")
    assert code == 0, err
    assert json.loads(out)["attachments"][1] == {
        "path": "mesh.bin", "size": len(mesh), "sha256": sha(mesh), "mode": "644",
        "kind": "stored"}
    code, out, err = run_cli("queue", "list", "--json")
    assert code == 0 and [w["secret_ok"] for w in json.loads(out)] == [True] * 17


def test_reset_and_prune_remove_only_what_nothing_refers_to(
        tmp_path: Path, caliber_home: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "shared.bin").write_bytes(b"shared by two workloads")
    (folder / "own.bin").write_bytes(b"only the first one's")
    first = workflow(folder, ["shared.bin", "own.bin"]).queue(pinion="p")
    second = workflow(folder, ["shared.bin"]).queue(pinion="p")
    third = workflow(folder, []).queue(pinion="p")
    assert run_pinion().summary.ran == 3
    shared, own = sha(b"shared by two workloads"), sha(b"only the first one's")
    assert set(blobs(caliber_home)) == {shared, own, sha(FUNCS.encode())}

    code, out, err = run_cli("queue", "reset", first)
    assert code == 0, err
    assert set(blobs(caliber_home)) == {shared, sha(FUNCS.encode())}  # own went, shared stays

    code, out, err = run_cli("results", "prune", "--older-than", "0s", "--dry-run")
    assert code == 0, err
    assert set(blobs(caliber_home)) == {shared, sha(FUNCS.encode())}
    code, out, err = run_cli("results", "prune", "--older-than", "0s")
    assert code == 0, err
    assert "2 stored files nothing refers to any more" in out
    assert blobs(caliber_home) == []
    with open_backend(local_target()) as backend:
        assert backend.list_workloads() == [] and second and third


def test_a_prune_keeps_the_blobs_of_queued_workloads(tmp_path: Path, caliber_home: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "in.bin").write_bytes(b"input")
    done = workflow(folder, ["in.bin"]).queue(pinion="p")
    assert run_pinion().summary.ran == 1
    waiting = workflow(folder, ["in.bin"]).queue(pinion="p")
    code, _out, err = run_cli("results", "prune", "--older-than", "0s")
    assert code == 0, err
    assert sha(b"input") in blobs(caliber_home)
    assert run_pinion().summary.ran == 1 and returned(waiting)["in.bin"][0] == sha(b"input")
    assert done


def test_a_blob_stored_but_not_yet_referred_to_survives_a_prune(
        tmp_path: Path, caliber_home: Path) -> None:
    """A ``workflow queue`` between storing its files and storing its workload: a prune at
    that moment keeps them (a pending reference), and the workload, queued after, runs."""
    folder = make_folder(tmp_path)
    (folder / "in.bin").write_bytes(b"being queued")
    from caliber.queue.api import make_workload

    with open_backend(local_target()) as queueing:
        workload = make_workload(workflow(folder, ["in.bin"]), "p", queueing)
        with open_backend(local_target()) as other:
            other.prune(utcnow())
        queueing.put(workload)
    assert sha(b"being queued") in blobs(caliber_home)
    assert run_pinion().summary.ran == 1


# --- folders ----------------------------------------------------------------------------


@posix_only
def test_a_folder_arrives_in_the_run_folder_with_its_paths_and_modes(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    model = folder / "model"
    (model / "parts" / "deep").mkdir(parents=True)
    files = {"model/mesh.bdf": b"GRID 1\n", "model/parts/a.bin": os.urandom(5000),
             "model/parts/deep/run.sh": b"#!/bin/sh\necho solve\n", "model/empty.txt": b""}
    for rel, data in files.items():
        (folder / rel).write_bytes(data)
    (folder / "model/parts/deep/run.sh").chmod(0o755)
    (model / "nothing").mkdir()  # an empty folder is not kept
    wid = workflow(folder, ["model/"], args=["model"]).queue(pinion="p")
    assert run_pinion().summary.ran == 1
    got = returned(wid)
    assert got == {rel.removeprefix("model/"): [sha(data), rel.endswith(".sh"), False]
                   for rel, data in files.items()}
    work_dir = Path(caliber.get_results(wid).work_dir or "")
    assert stat.S_IMODE((work_dir / "model/parts/deep/run.sh").stat().st_mode) == 0o700
    assert stat.S_IMODE((work_dir / "model/mesh.bdf").stat().st_mode) == 0o600


def test_a_folder_inside_and_a_file_listed_again_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / "x.txt").write_text("x")
    with pytest.raises(AttachmentError, match="listed twice"):
        workflow(folder, ["data", "data/x.txt"]).queue(pinion="p")


@posix_only
def test_a_link_inside_a_folder_that_stays_inside_is_followed(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / "real.txt").write_text("real")
    (folder / "data" / "alias.txt").symlink_to("real.txt")
    wid = workflow(folder, ["data"], args=["data"]).queue(pinion="p")
    assert run_pinion().summary.ran == 1
    assert returned(wid) == {"alias.txt": [sha(b"real"), False, False],
                             "real.txt": [sha(b"real"), False, False]}


def test_workflow_files_take_folders_and_references(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    (folder / "data").mkdir()
    (folder / "data" / "x.txt").write_text("x")
    shared = tmp_path / "share" / "big.bin"
    shared.parent.mkdir()
    shared.write_bytes(b"big input")
    ref = caliber.Reference(str(shared), sha256=sha(b"big input"), size=9)
    workflow(folder, ["data", ref]).export(folder / "w.json")
    document = json.loads((folder / "w.json").read_text())
    assert document["attachments"] == ["attfuncs.py", "data", {
        "reference": str(shared), "sha256": sha(b"big input"), "size": 9}]
    loaded = caliber.Workflow.load(folder / "w.json")
    assert loaded.attachments == ["attfuncs.py", "data", ref]
    code, out, err = run_cli("workflow", "show", str(folder / "w.json"))
    assert code == 0, err
    assert "by reference" in out and "data/" in out and "1 files" in out
    schema = json_schema()
    assert "reference" in json.dumps(schema["$defs"]["ReferenceNode"])
    document["attachments"][2]["reference"] = "relative/big.bin"
    (folder / "bad.json").write_text(json.dumps(document))
    with pytest.raises(WorkflowFileError, match="absolute path"):
        caliber.Workflow.load(folder / "bad.json")


# --- by reference -----------------------------------------------------------------------


@posix_only
def test_an_attachment_by_reference_is_checked_before_the_run(
        tmp_path: Path, caliber_home: Path) -> None:
    folder = make_folder(tmp_path)
    shared = tmp_path / "share" / "mesh.bdf"
    shared.parent.mkdir()
    shared.write_bytes(b"GRID 1 2 3\n" * 1000)
    ref = caliber.Reference(str(shared))  # no hash given: read when queued
    good = workflow(folder, [ref], task="digest", args=["mesh.bdf"]).queue(pinion="p")
    assert run_pinion().summary.ran == 1
    assert returned(good) == sha(shared.read_bytes())
    assert blobs(caliber_home) == [sha(FUNCS.encode())]  # never copied into the store
    code, out, _err = run_cli("queue", "view", good)
    assert code == 0 and "by reference" in out
    code, out, _err = run_cli("queue", "view", good, "--json")
    assert json.loads(out)["attachments"][1] == {
        "path": "mesh.bdf", "size": 11000, "sha256": sha(shared.read_bytes()), "mode": "644",
        "kind": "reference", "reference": str(shared)}

    changed = workflow(folder, [ref], task="digest", args=["mesh.bdf"]).queue(pinion="p")
    shared.write_bytes(b"GRID 9 9 9\n" * 1000)
    assert run_pinion().summary.failed == 1
    missing = workflow(folder, [caliber.Reference(str(shared), name="m.bdf")],
                       task="digest", args=["m.bdf"]).queue(pinion="p")
    shared.unlink()
    assert run_pinion().summary.failed == 1
    with open_backend(local_target()) as backend:
        changed_error = backend.get(changed).last_error or ""
        missing_error = backend.get(missing).last_error or ""
        assert backend.get(changed).results_id is None  # failed before any task
    assert "mesh.bdf" in changed_error and "changed since it was queued" in changed_error
    assert "m.bdf" in missing_error and "missing" in missing_error


def test_a_reference_whose_hash_is_wrong_is_refused_when_queued(tmp_path: Path) -> None:
    folder = make_folder(tmp_path)
    shared = tmp_path / "mesh.bdf"
    shared.write_bytes(b"mesh")
    with pytest.raises(AttachmentError, match="does not have the SHA-256 given"):
        workflow(folder, [caliber.Reference(str(shared), sha256="0" * 64)]).queue(pinion="p")
    with pytest.raises(AttachmentError, match="absolute"):
        caliber.Reference("mesh.bdf")
    with pytest.raises(AttachmentError, match="cannot be read"):
        workflow(folder, [caliber.Reference(str(tmp_path / "none"))]).queue(pinion="p")


# --- older queues -----------------------------------------------------------------------


def old_queue(db: Path, key: bytes, content: bytes) -> str:
    """A schema-5 queue holding one workload as Caliber before the store wrote it: its
    attachments' bytes inline in the row, signed as then ([path, sha256])."""
    conn = sqlite3.connect(db)
    before = PYTHON_STEPS_FROM - 1  # the schema of the last Caliber without the store
    for step in MIGRATIONS[:before]:
        conn.executescript(step)
    conn.execute(f"PRAGMA user_version = {before}")
    workload = Workload(
        pinion="p", workflow=workflow(db.parent / "wf", []).to_document(),
        attachments=[Attachment.from_bytes("attfuncs.py", FUNCS.encode()),
                     Attachment.from_bytes("data/in.bin", content)])
    workload.secret = secret.sign(workload, key)
    body = workload.model_dump_json(include={"workflow", "attachments", "queued_by"})
    assert '"mode"' not in body.replace('"mode":null', "")
    body = json.dumps({**json.loads(body), "attachments": [
        {k: v for k, v in a.items() if v is not None}
        for a in json.loads(body)["attachments"]]})
    conn.execute(
        "INSERT INTO workloads (id, pinion, workflow_name, status, created_at, secret, body) "
        "VALUES (?, 'p', 'att', 'queued', ?, ?, ?)",
        (workload.id, secret.signed_time(workload.created_at), workload.secret, body))
    conn.commit()
    conn.close()
    return workload.id


def test_an_older_queue_moves_its_attachments_into_the_store_and_still_runs(
        tmp_path: Path, caliber_home: Path) -> None:
    make_folder(tmp_path)
    caliber_home.mkdir(mode=0o700)
    db = caliber_home / "caliber.db"
    wid = old_queue(db, secret.load_key(), b"\xff\x00 old binary input")
    code, out, err = run_cli("queue", "list", "--json")  # opening it migrates it
    assert code == 0, err
    assert [(w["id"], w["secret_ok"]) for w in json.loads(out)] == [(wid, True)]
    body = sqlite3.connect(db).execute("SELECT body FROM workloads").fetchone()[0]
    assert '"content"' not in body
    assert sha(b"\xff\x00 old binary input") in blobs(caliber_home)
    code, out, err = run_cli("queue", "view", wid, "--json")
    assert code == 0 and json.loads(out)["attachments"][1]["mode"] is None
    assert run_pinion().summary.ran == 1
    assert returned(wid)["data/in.bin"] == [sha(b"\xff\x00 old binary input"), False, False]


def test_an_older_row_whose_content_was_changed_stays_as_it_is_and_never_runs(
        tmp_path: Path, caliber_home: Path) -> None:
    make_folder(tmp_path)
    caliber_home.mkdir(mode=0o700)
    db = caliber_home / "caliber.db"
    wid = old_queue(db, secret.load_key(), b"input")
    conn = sqlite3.connect(db)
    body = json.loads(conn.execute("SELECT body FROM workloads").fetchone()[0])
    body["attachments"][1]["content"] = "changed"
    conn.execute("UPDATE workloads SET body = ?", (json.dumps(body),))
    conn.commit()
    conn.close()
    with SQLiteBackend(db) as backend:
        assert backend.get(wid).attachments[1].content == "changed"
    pinion = run_pinion()
    assert pinion.summary.ran == 0 and [i for i, _ in pinion.summary.skipped] == [wid]
