"""``caliber queue export`` / ``import``: a queue moved whole to another one (SQLite -> SQLite,
SQLite -> PostgreSQL): every workload as it was (status, attempts, history, run-secret),
every Results (signature and all) and every stored file; a damaged archive or an id the queue
holds already imports nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.pinion_helpers import make_folder
from tests.pinion_helpers import queue as queue_workflow

KEY = "archive-key-" + "1" * 40


def caliber(*args: str, home: Path, url: str | None = None,
            check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CALIBER_HOME": str(home), "CALIBER_SECRET_KEY": KEY}
    env.pop("CALIBER_QUEUE_URL", None)
    if url:
        env["CALIBER_QUEUE_URL"] = url
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, env=env, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def snapshot(home: Path, url: str | None = None) -> dict[str, Any]:
    """Everything a queue holds, as plain data: workloads, Results, the bytes of every blob."""
    script = """
import json
from caliber.queue.registry import open_backend
from caliber.queue.target import resolve_target
with open_backend(resolve_target()) as b:
    ws = [w.model_dump(mode="json", exclude={"progress"}) for w in b.list_workloads()]
    rs = sorted((r.model_dump(mode="json", by_alias=True) for r in b.list_results()),
                key=lambda r: r["id"])
    shas = sorted({a["sha256"] for w in ws for a in w["attachments"]}
                  | {s for r in b.list_results() for s in r.blobs})
    blobs = {s: b.open_blob(s).read().hex() for s in shas}
print(json.dumps({"workloads": ws, "results": rs, "blobs": blobs}))
"""
    env = {**os.environ, "CALIBER_HOME": str(home), "CALIBER_SECRET_KEY": KEY}
    env.pop("CALIBER_QUEUE_URL", None)
    if url:
        env["CALIBER_QUEUE_URL"] = url
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, check=True)
    data: dict[str, Any] = json.loads(done.stdout)
    return data


FUNCS = '''
def add(x, y=1):
    return x + y

def boom():
    raise ValueError("burnt")
'''


@pytest.fixture
def source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A local queue with one workload of each kind: completed, failed, queued (each with a
    stored attachment), and the Results of a run that was never queued."""
    home = tmp_path / "source-home"
    monkeypatch.setenv("CALIBER_HOME", str(home))
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    folder = make_folder(tmp_path / "wf", "archfuncs", FUNCS)
    queue_workflow(folder, [("add", [1])], pinion="p", module="archfuncs", name="done")
    queue_workflow(folder, [("boom", [])], pinion="p", module="archfuncs", name="bad")
    caliber("pinion", "init", "p", "-a", "1", "-w", "0", "--max-attempts", "1", "-q",
            home=home, check=False)
    queue_workflow(folder, [("add", [41])], pinion="p", module="archfuncs", name="waiting")
    from tests.pinion_helpers import workflow

    workflow(folder, [("add", [2])], module="archfuncs", name="local").run(
        work_dir=tmp_path / "run")
    return home


def test_sqlite_to_sqlite_keeps_everything_and_the_copy_runs(source: Path,
                                                             tmp_path: Path) -> None:
    before = snapshot(source)
    statuses = sorted(w["status"] for w in before["workloads"])
    assert statuses == ["completed", "failed", "queued"] and len(before["results"]) == 3
    archive = tmp_path / "queue.jsonl"
    out = caliber("queue", "export", str(archive), "--json", home=source)
    assert json.loads(out.stdout)["workloads"] == 3
    target = tmp_path / "target-home"
    caliber("queue", "import", str(archive), home=target)
    assert snapshot(target) == before  # ids, statuses, history, signatures, bytes
    assert snapshot(source) == before  # the export changed nothing
    # The copy is a working queue: its queued workload runs there, from the imported blob.
    listed = json.loads(caliber("queue", "list", "--json", home=target).stdout)
    assert {w["secret_ok"] for w in listed} == {True}
    caliber("pinion", "init", "p", "-a", "1", "-w", "0", "-q", home=target)
    after = {w["workflow"]["name"]: w for w in snapshot(target)["workloads"]}
    assert after["waiting"]["status"] == "completed"


def test_import_refuses_ids_it_holds_and_damaged_files_changing_nothing(
        source: Path, tmp_path: Path) -> None:
    archive = tmp_path / "queue.jsonl"
    caliber("queue", "export", str(archive), home=source)
    target = tmp_path / "target-home"
    caliber("queue", "import", str(archive), home=target)
    once = snapshot(target)
    again = caliber("queue", "import", str(archive), home=target, check=False)
    assert again.returncode == 2
    assert again.stderr.count("\n") == 1 and "holds 3 workloads" in again.stderr
    assert "nothing imported" in again.stderr and "Traceback" not in again.stderr
    assert snapshot(target) == once

    lines = archive.read_text().splitlines(keepends=True)
    blob_at = next(i for i, line in enumerate(lines) if line.startswith('{"blob"'))
    chunk = json.loads(lines[blob_at + 1])["chunk"]
    damaged = {
        "cut": "".join(lines[:-1]),
        "bytes": "".join([*lines[:blob_at + 1],
                          json.dumps({"chunk": chunk[:-4] + ("AAAA" if chunk[-4:] != "AAAA"
                                                             else "BBBB")}) + "\n",
                          *lines[blob_at + 2:]]),
        "json": "".join([*lines[:3], "{not json\n", *lines[3:]]),
        "not an archive": '{"hello": 1}\n',
    }
    fresh = tmp_path / "fresh-home"
    empty = snapshot(fresh)
    for name, text in damaged.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(text)
        done = caliber("queue", "import", str(bad), home=fresh, check=False)
        assert done.returncode == 2, (name, done.stderr)
        assert done.stderr.startswith("caliber: error: ") and done.stderr.count("\n") == 1
        assert snapshot(fresh) == empty, name
    exists = caliber("queue", "export", str(archive), home=source, check=False)
    assert exists.returncode == 2 and "exists already" in exists.stderr


def test_sqlite_to_postgresql(source: Path, tmp_path: Path, postgres_url: str) -> None:
    pytest.importorskip("psycopg", reason="psycopg is not installed (pip install -e "
                        "'.[postgres]')")
    pytest.importorskip("caliber.queue.postgres.backend", reason="no PostgreSQL queue here")
    before = snapshot(source)
    archive = tmp_path / "queue.jsonl"
    caliber("queue", "export", str(archive), home=source)
    machine = tmp_path / "team-machine"
    caliber("queue", "import", str(archive), home=machine, url=postgres_url)
    assert snapshot(machine, postgres_url) == before
    back = tmp_path / "back.jsonl"
    caliber("queue", "export", str(back), home=machine, url=postgres_url)
    caliber("queue", "import", str(back), home=tmp_path / "round-trip")
    assert snapshot(tmp_path / "round-trip") == before


@pytest.mark.slow
def test_export_and_import_stream_a_big_attachment_in_bounded_memory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    size = 256 << 20
    home = tmp_path / "home"
    monkeypatch.setenv("CALIBER_HOME", str(home))
    monkeypatch.setenv("CALIBER_SECRET_KEY", KEY)
    folder = make_folder(tmp_path / "wf", "archfuncs", FUNCS)
    with open(folder / "mesh.bin", "wb") as f:
        for i in range(size >> 20):
            f.write(bytes([i % 251]) * (1 << 20))
    import caliber as api

    api.Workflow(api.Process([api.Task("archfuncs:add", args=[1])]), "big",
                 attachments=["archfuncs.py", "mesh.bin"], base_dir=folder).queue(pinion="p")
    (folder / "mesh.bin").unlink()
    archive = tmp_path / "queue.jsonl"
    wrapper = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True); "
               "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    peaks = {}
    for name, args, where in (("export", ["export", str(archive)], home),
                              ("import", ["import", str(archive)], tmp_path / "target")):
        env = {**os.environ, "CALIBER_HOME": str(where), "CALIBER_SECRET_KEY": KEY}
        done = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "caliber",
                               "queue", *args], capture_output=True, text=True, env=env,
                              check=True)
        peaks[name] = int(done.stdout.split()[-1]) / 1024  # KiB -> MiB
    assert archive.stat().st_size > size
    assert peaks["export"] < 100 and peaks["import"] < 100, peaks  # measured: about 45 MiB
    script = ("from caliber.queue.registry import open_backend\n"
              "from caliber.queue.target import local_target\n"
              "with open_backend(local_target()) as b:\n"
              "    a = b.list_workloads()[0].attachments[1]\n"
              "    print(a.size, b.has_blob(a.sha256))\n")
    env = {**os.environ, "CALIBER_HOME": str(tmp_path / "target")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, check=True)
    assert done.stdout.split() == [str(size), "True"]


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_chains_start_times_and_priorities_come_through(tmp_path: Path, kind: str,
                                                         request: pytest.FixtureRequest) -> None:
    """What a workload runs after, its start time (written with an offset), its priority and
    its notification address come through an export and import as they were signed, and the
    copy goes on with the chain: completing the upstream there queues the one after it."""
    import datetime as dt

    from caliber.queue.archive import export_queue, import_queue
    from caliber.queue.secret import sign, verify
    from caliber.queue.sqlite.backend import SQLiteBackend
    from caliber.queue.status import WorkloadStatus
    from tests.contract.test_backend_contract import make_results, make_workload

    key = KEY.encode()
    source = SQLiteBackend(tmp_path / "source.db")
    if kind == "postgres":
        pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
        from caliber.queue.postgres.backend import PostgresBackend

        target: Any = PostgresBackend(request.getfixturevalue("postgres_url"))
    else:
        target = SQLiteBackend(tmp_path / "target.db")
    with source, target:
        first = make_workload(seconds=1)
        source.put(first)
        then = make_workload(seconds=2)
        then.after = [first.id]
        then.not_before = dt.datetime(2031, 5, 6, 22, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
        then.priority, then.notify = 7, "http://127.0.0.1:9/hook"
        then.secret = sign(then, key)
        source.put(then)
        archive = tmp_path / "queue.jsonl"
        with open(archive, "w", encoding="utf-8") as out:
            export_queue(source, out)
        import_queue(target, archive)
        copied = target.get(then.id)
        assert copied.model_dump(exclude={"progress"}) == source.get(then.id).model_dump(
            exclude={"progress"})
        assert copied.status == WorkloadStatus.WAITING and verify(copied, key)
        assert (copied.after, copied.priority, copied.notify) == ([first.id], 7, then.notify)
        assert copied.not_before == then.not_before
        claim = target.claim("p1", "a", 60, "k")
        assert claim is not None and claim.workload.id == first.id
        target.complete(claim, make_results(first.id))
        assert target.get(then.id).status == WorkloadStatus.QUEUED


def _leaving_out(archive: Path, wid: str, into: Path) -> Path:
    """A copy of ``archive`` without the workload ``wid`` (its end line counting one less)."""
    kept = []
    for line in archive.read_text().splitlines(keepends=True):
        record = json.loads(line)
        if record.get("workload", {}).get("id") == wid:
            continue
        if "end" in record:
            record["end"]["workloads"] -= 1
            line = json.dumps(record) + "\n"
        kept.append(line)
    into.write_text("".join(kept))
    return into


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_a_waiting_workload_comes_in_only_with_what_it_runs_after(
        tmp_path: Path, kind: str, request: pytest.FixtureRequest) -> None:
    """A waiting workload whose upstream is neither in the file nor in the queue would wait
    for ever: import refuses the whole file, in one line naming both, exit code 2, the queue
    exactly as it was. Once the upstream is in the queue and has completed there, the same
    file imports, and the waiting workload is queued at once (nothing is left to wait for)."""
    from caliber.queue.archive import export_queue
    from caliber.queue.sqlite.backend import SQLiteBackend
    from caliber.queue.status import WorkloadStatus
    from tests.contract.test_backend_contract import make_results, make_workload

    url = None
    if kind == "postgres":
        pytest.importorskip("psycopg", reason="psycopg is not installed (the postgres extra)")
        url = request.getfixturevalue("postgres_url")
    home = tmp_path / "target-home"

    def target() -> Any:
        if url is None:
            return SQLiteBackend(home / "caliber.db")
        from caliber.queue.postgres.backend import PostgresBackend

        return PostgresBackend(url)

    def exported(name: str) -> list[str]:
        caliber("queue", "export", str(tmp_path / name), home=home, url=url)
        return (tmp_path / name).read_text().splitlines()[1:]  # after the dated header

    up, down = make_workload(seconds=1), make_workload(seconds=2)
    down.after = [up.id]
    with SQLiteBackend(tmp_path / "source.db") as source:
        source.put(up)
        source.put(down)
        archive = tmp_path / "queue.jsonl"
        with open(archive, "w", encoding="utf-8") as out:
            export_queue(source, out)
    alone = _leaving_out(archive, up.id, tmp_path / "down-alone.jsonl")
    with target() as queue:
        queue.put(make_workload(seconds=3))  # the queue holds something of its own
    before = exported("before.jsonl")
    done = caliber("queue", "import", str(alone), home=home, url=url, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("caliber: error: ") and done.stderr.count("\n") == 1
    assert f"waiting workload {down.id} runs after workload {up.id}" in done.stderr
    assert "nothing imported" in done.stderr and "Traceback" not in done.stderr
    assert exported("after.jsonl") == before

    caliber("queue", "import", str(_leaving_out(archive, down.id, tmp_path / "up.jsonl")),
            home=home, url=url)
    with target() as queue:
        claim = queue.claim("p1", "pin", 60, "k")
        assert claim is not None and claim.workload.id == up.id
        queue.complete(claim, make_results(up.id))
    caliber("queue", "import", str(alone), home=home, url=url)
    with target() as queue:
        got = queue.get(down.id)
        assert got.status == WorkloadStatus.QUEUED
        assert got.history[-1].message.startswith("queued as it was imported")
        claim = queue.claim("p1", "pin", 60, "k")
        assert claim is not None and claim.workload.id == down.id
