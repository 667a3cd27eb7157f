"""Queueing a workflow and managing workloads through caliber.queue.api."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import sys
from pathlib import Path

import pytest

from caliber.errors import (
    AmbiguousIdError,
    AttachmentError,
    NotFoundError,
    QueueStateError,
    UsageError,
)
from caliber.queue import api
from caliber.queue.blobs import BlobStore
from caliber.queue.registry import open_backend
from caliber.queue.secret import key_id, load_key
from caliber.queue.target import local_target
from caliber.queue.workload import WorkloadStatus
from caliber.workflow.model import Process, Task, Workflow


def make_workflow(folder: Path, attachments: list[str] | None = None) -> Workflow:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "funcs.py").write_text("def f(x):\n    return x\n")
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "mesh.bin").write_bytes(b"\x00\xff\x10binary")
    task = Task("funcs:f", name="first", args=[1])
    return Workflow(Process([task], name="main"), "demo",
                    attachments=attachments if attachments is not None
                    else ["funcs.py", "data/mesh.bin"], base_dir=folder)


def blob_bytes(backend: BlobStore, sha256: str) -> bytes:
    with backend.open_blob(sha256) as f:
        return f.read()


def count_workloads() -> int:
    with open_backend(local_target()) as backend:
        return len(backend.list_workloads())


def test_queue_wraps_everything(tmp_path: Path) -> None:
    wid = make_workflow(tmp_path / "wf").queue(pinion="mypinion")
    with open_backend(local_target()) as backend:
        w = backend.get(wid)
        stored = [blob_bytes(backend, a.sha256) for a in w.attachments]
    assert w.pinion == "mypinion" and w.status == WorkloadStatus.QUEUED and not w.completed
    assert w.workflow["name"] == "demo" and w.workflow["process"]["tasks"][0]["name"] == "first"
    assert [(a.path, a.kind, a.mode, a.content) for a in w.attachments] == [
        ("funcs.py", "stored", 0o644, None), ("data/mesh.bin", "stored", 0o644, None)]
    assert stored == [b"def f(x):\n    return x\n", b"\x00\xff\x10binary"]
    assert "@" in w.queued_by and w.created_at.utcoffset() is not None
    assert w.attempts == 0 and w.results_id is None and w.secret
    [checked] = api.list_workloads(local_target())
    assert checked.secret_ok


def test_queue_takes_what_is_on_disk_now(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    wf.export(tmp_path / "wf" / "demo.json")
    (tmp_path / "wf" / "funcs.py").write_text("def f(x):\n    return 2 * x\n")
    loaded = Workflow.load(tmp_path / "wf" / "demo.json")
    wid = api.queue_workflow(loaded, "p1", local_target())
    with open_backend(local_target()) as backend:
        attachment = backend.get(wid).attachments[0]
        assert b"2 * x" in blob_bytes(backend, attachment.sha256)


@pytest.mark.parametrize("bad", ["/etc/passwd", "../secrets.txt", "data/../../x.py"])
def test_bad_attachment_paths_are_refused_before_queueing(tmp_path: Path, bad: str) -> None:
    wf = make_workflow(tmp_path / "wf", ["funcs.py", bad])
    with pytest.raises(AttachmentError):
        wf.queue(pinion="p1")
    assert count_workloads() == 0


def test_missing_attachment_is_refused(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf", ["funcs.py", "nothere.csv"])
    with pytest.raises(AttachmentError, match="not found"):
        wf.queue(pinion="p1")
    assert count_workloads() == 0


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_link_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "outside.txt").write_text("secret")
    wf = make_workflow(tmp_path / "wf", ["funcs.py", "link.txt"])
    os.symlink(tmp_path / "outside.txt", tmp_path / "wf" / "link.txt")
    with pytest.raises(AttachmentError, match="outside"):
        wf.queue(pinion="p1")
    assert count_workloads() == 0


@pytest.mark.parametrize("name", ["", " ", "my pinion", "-p", "a/b", "x" * 101])
def test_bad_pinion_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match="pinion name"):
        make_workflow(tmp_path / "wf").queue(pinion=name)
    assert count_workloads() == 0


def test_list_filters_and_bad_status(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    a, b = wf.queue(pinion="p1"), wf.queue(pinion="p2")
    assert [c.workload.id for c in api.list_workloads(local_target())] == [a, b]
    assert [c.workload.id for c in api.list_workloads(local_target(), pinion="p2")] == [b]
    assert [c.workload.id for c in api.list_workloads(local_target(), status="queued")] == [a, b]
    assert api.list_workloads(local_target(), status="running") == []
    with pytest.raises(UsageError, match="unknown status"):
        api.list_workloads(local_target(), status="sleeping")


def test_edited_in_database_is_a_secret_mismatch(tmp_path: Path, caliber_home: Path) -> None:
    wid = make_workflow(tmp_path / "wf").queue(pinion="p1")
    conn = sqlite3.connect(caliber_home / "caliber.db")
    body = json.loads(conn.execute("SELECT body FROM workloads").fetchone()[0])
    body["workflow"]["process"]["tasks"][0]["args"] = [666]
    conn.execute("UPDATE workloads SET body = ?", (json.dumps(body),))
    conn.commit()
    conn.close()
    [checked] = api.list_workloads(local_target())
    assert checked.workload.id == wid and not checked.secret_ok
    assert checked.summary()["secret_ok"] is False
    resigned = api.resetsecret(wid[:4], local_target())
    assert resigned.secret_ok and api.view_workload(wid, local_target()).secret_ok
    assert "signed again with key " + key_id(load_key()) in resigned.workload.history[-1].message


def test_another_users_key_is_a_mismatch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", "a" * 32)
    wid = make_workflow(tmp_path / "wf").queue(pinion="p1")
    monkeypatch.setenv("CALIBER_SECRET_KEY", "b" * 32)
    assert not api.view_workload(wid, local_target()).secret_ok
    api.resetsecret(wid, local_target())
    assert api.view_workload(wid, local_target()).secret_ok
    monkeypatch.setenv("CALIBER_SECRET_KEY", "a" * 32)
    assert not api.view_workload(wid, local_target()).secret_ok


def test_resetsecret_refuses_changed_attachment_content(
    tmp_path: Path, caliber_home: Path
) -> None:
    """A stored attachment whose bytes changed in the store: ``queue list`` and ``view`` do not
    read bytes (the signature over the names still checks; the pinion refuses it when it
    writes it out), and signing it again is refused."""
    wid = make_workflow(tmp_path / "wf").queue(pinion="p1")
    with open_backend(local_target()) as backend:
        path = backend.blobs.path(backend.get(wid).attachments[0].sha256)
    path.chmod(0o600)
    path.write_text("import os\n")
    assert api.view_workload(wid, local_target()).secret_ok
    with pytest.raises(QueueStateError, match=r"funcs\.py.*does not match its SHA-256"):
        api.resetsecret(wid, local_target())
    path.unlink()
    with pytest.raises(QueueStateError, match=r"funcs\.py"):
        api.resetsecret(wid, local_target())


def test_view_detail_keys(tmp_path: Path) -> None:
    wid = make_workflow(tmp_path / "wf").queue(pinion="p1")
    detail = api.view_workload(wid, local_target()).detail()
    for key in ("id", "workflow", "pinion", "status", "created_at", "attempts", "results_id",
                "secret_ok", "attachments", "history", "lease", "workflow_document"):
        assert key in detail
    assert detail["attachments"][1] == {
        "path": "data/mesh.bin", "size": 9, "mode": "644", "kind": "stored",
        "sha256": hashlib.sha256(b"\x00\xff\x10binary").hexdigest()}
    assert json.dumps(detail)


def test_reset_and_ids(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    wid = wf.queue(pinion="p1")
    with pytest.raises(NotFoundError):
        api.view_workload("zzzzzz", local_target())
    removed = api.reset(wid[:5], local_target())
    assert removed.id == wid and count_workloads() == 0
    with pytest.raises(NotFoundError):
        api.reset(wid, local_target())


def test_ambiguous_prefix_lists_candidates(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    ids = [wf.queue(pinion="p1") for _ in range(40)]  # 40 ids over 32 first letters
    first = {i[0] for i in ids}
    shared = next(c for c in sorted(first) if sum(i.startswith(c) for i in ids) > 1)
    with pytest.raises(AmbiguousIdError) as info:
        api.view_workload(shared, local_target())
    assert set(info.value.candidates) == {i for i in ids if i.startswith(shared)}


def test_reset_running_needs_force(tmp_path: Path) -> None:
    wid = make_workflow(tmp_path / "wf").queue(pinion="p1")
    with open_backend(local_target()) as backend:
        assert backend.claim("p1", "me", 60.0, "k") is not None
    with pytest.raises(QueueStateError, match="--force"):
        api.reset(wid, local_target())
    assert count_workloads() == 1
    api.reset(wid, local_target(), force=True)
    assert count_workloads() == 0
