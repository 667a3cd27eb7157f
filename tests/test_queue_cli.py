"""The queue commands of the mission page, verbatim, and what they do with bad input."""

from __future__ import annotations

import json
import shlex
import shutil
import sqlite3
import subprocess
from pathlib import Path

import pytest

from caliber.cli import main
from caliber.queue.sqlite.schema import SCHEMA_VERSION

SUMMARY_KEYS = {"id", "workflow", "pinion", "status", "created_at", "attempts", "results_id",
                "secret_ok"}


@pytest.fixture
def pasta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pasta_exported: Path) -> Path:
    folder = tmp_path / "pasta"
    shutil.copytree(pasta_exported, folder)
    monkeypatch.chdir(folder)
    return folder


def caliber(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    else:  # pragma: no cover - main always exits
        code = 0
    out, err = capsys.readouterr()
    return code, out, err


def test_mission_page_commands(pasta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = caliber(capsys, "workflow", "queue", "pasta.json", "-p", "mypinion")
    assert code == 0
    wid = out.strip()
    assert len(wid) == 10

    code, out, _ = caliber(capsys, "queue", "list")
    assert code == 0
    for word in ("id", "workflow", "pinion", "status", "created", "attempts", "results", wid,
                 "pasta", "mypinion", "queued", "ok"):
        assert word in out

    code, out, _ = caliber(capsys, "queue", "view", wid)
    assert code == 0
    for word in (wid, "pasta_functions.py", "Make dough", "queued by", "history",
                 "matches your key"):
        assert word in out

    code, out, _ = caliber(capsys, "queue", "resetsecret", wid)
    assert code == 0 and "signed" in out

    code, out, _ = caliber(capsys, "queue", "reset", wid)
    assert code == 0 and "deleted" in out
    code, out, _ = caliber(capsys, "queue", "list", "--json")
    assert json.loads(out) == []


def test_json_output_has_the_stable_keys(pasta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = [caliber(capsys, "workflow", "queue", "pasta.json", "-p", p)[1].strip()
           for p in ("mypinion", "other")]
    code, out, _ = caliber(capsys, "queue", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and [w["id"] for w in listed] == ids
    assert all(set(w) >= SUMMARY_KEYS for w in listed)
    assert listed[0]["secret_ok"] is True and listed[0]["status"] == "queued"
    code, out, _ = caliber(capsys, "queue", "list", "--json", "--pinion", "other")
    assert [w["id"] for w in json.loads(out)] == ids[1:]
    code, out, _ = caliber(capsys, "queue", "list", "--json", "--status", "running")
    assert json.loads(out) == []
    code, out, _ = caliber(capsys, "queue", "view", ids[0][:6], "--json")
    view = json.loads(out)
    assert set(view) >= SUMMARY_KEYS and view["id"] == ids[0]
    assert view["attachments"][0]["path"] == "pasta_functions.py"
    assert view["history"][0]["status"] == "queued"
    code, out, _ = caliber(capsys, "queue", "resetsecret", ids[0], "--json")
    assert json.loads(out)["secret_ok"] is True
    code, out, _ = caliber(capsys, "queue", "reset", ids[0], "--json")
    assert json.loads(out)["deleted"] is True


def test_tampered_workload_shows_as_mismatch(
    pasta: Path, caliber_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wid = caliber(capsys, "workflow", "queue", "pasta.json", "-p", "mypinion")[1].strip()
    conn = sqlite3.connect(caliber_home / "caliber.db")
    conn.execute("UPDATE workloads SET pinion = 'other' WHERE id = ?", (wid,))
    conn.commit()
    conn.close()
    code, out, _ = caliber(capsys, "queue", "list")
    assert code == 0 and "mismatch" in out and "resetsecret" in out
    assert json.loads(caliber(capsys, "queue", "list", "--json")[1])[0]["secret_ok"] is False


@pytest.mark.parametrize(("content", "expected"), [
    ('{"caliber": 1, "name": "x",', "line 1"),
    ('{"caliber": 99, "name": "x"}', "format version"),
    ('{"caliber": 1, "name": "x", "attachments": ["../up.py"], "process": '
     '{"type": "process", "tasks": []}}', "up.py"),
    ('{"caliber": 1, "name": "x", "attachments": ["gone.py"], "process": '
     '{"type": "process", "tasks": []}}', "gone.py"),
])
def test_bad_workflow_files_queue_nothing(
    pasta: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    Path("bad.json").write_text(content)
    code, out, err = caliber(capsys, "workflow", "queue", "bad.json", "-p", "mypinion")
    assert code == 2 and out == "" and expected in err and err.count("\n") == 1
    assert json.loads(caliber(capsys, "queue", "list", "--json")[1]) == []


def test_unknown_and_ambiguous_ids(pasta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("view", "reset", "resetsecret"):
        code, _, err = caliber(capsys, "queue", command, "zzzzzzzz")
        assert code == 2 and "no workload with id 'zzzzzzzz'" in err
    ids = [caliber(capsys, "workflow", "queue", "pasta.json", "-p", "p")[1].strip()
           for _ in range(40)]
    prefix = next(c for c in sorted({i[0] for i in ids})
                  if sum(i.startswith(c) for i in ids) > 1)
    code, _, err = caliber(capsys, "queue", "view", prefix)
    assert code == 2 and "ambiguous" in err
    assert all(i in err for i in ids if i.startswith(prefix))


def test_reset_running_needs_force(pasta: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from caliber.queue.registry import open_backend
    from caliber.queue.target import local_target

    wid = caliber(capsys, "workflow", "queue", "pasta.json", "-p", "mypinion")[1].strip()
    with open_backend(local_target()) as backend:
        backend.claim("mypinion", "busy-pinion", 60.0, "k")
    code, _, err = caliber(capsys, "queue", "reset", wid)
    assert code == 2 and "running" in err and "--force" in err
    assert caliber(capsys, "queue", "reset", wid, "--force")[0] == 0


def test_newer_database_is_refused(pasta: Path, caliber_home: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    caliber_home.mkdir(parents=True)
    conn = sqlite3.connect(caliber_home / "caliber.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    before = (caliber_home / "caliber.db").read_bytes()
    code, _, err = caliber(capsys, "queue", "list")
    assert code == 1 and "newer Caliber" in err and err.count("\n") == 1
    code, _, err = caliber(capsys, "workflow", "queue", "pasta.json", "-p", "mypinion")
    assert code == 1 and "newer Caliber" in err
    assert (caliber_home / "caliber.db").read_bytes() == before


def test_not_a_database(pasta: Path, caliber_home: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    caliber_home.mkdir(parents=True)
    (caliber_home / "caliber.db").write_text("hello, I am a text file\n" * 100)
    code, _, err = caliber(capsys, "queue", "list")
    assert code == 1 and "not a usable Caliber queue database" in err
    assert err.count("\n") == 1


def test_two_terminals_queue_and_list_at_once(pasta: Path, caliber_cmd: list[str]) -> None:
    """Several processes queue and list at the same time, starting with no database."""
    queue_cmd = [*caliber_cmd, "workflow", "queue", "pasta.json", "-p", "mypinion"]
    list_cmd = [*caliber_cmd, "queue", "list", "--json"]
    script = "; ".join([shlex.join(queue_cmd)] * 3)
    procs = [subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    procs += [subprocess.Popen(["sh", "-c", "; ".join([shlex.join(list_cmd)] * 2)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for _ in range(2)]
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=100)
        assert proc.returncode == 0 and err == "", err
        outputs.append(out)
    queued = {line for out in outputs[:2] for line in out.split()}
    assert len(queued) == 6
    assert all(out.lstrip().startswith("[") for out in outputs[2:])
    final = subprocess.run(list_cmd, capture_output=True, text=True, check=True)
    assert {w["id"] for w in json.loads(final.stdout)} == queued
