"""Result files come back: a workflow's ``outputs=`` globs, collected from the run folder when
the run ends (a real pinion process, or ``workflow run``), kept in the queue's content store,
listed in the Results and brought back byte for byte by ``caliber results files ID --to DIR``
and by ``Results.save_files`` / ``Results.open_file``."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.errors import CaliberError, NotFoundError, UsageError
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import make_folder, start_pinion, status_of, stop, wait_for
from tests.test_lifecycle import workload_line

SOLVER = '''
import os, time

def solve(n):
    os.makedirs("fields/step1", exist_ok=True)
    os.makedirs("fields/step2", exist_ok=True)
    for i in range(n):
        with open(f"fields/step{1 + i % 2}/u{i}.vtu", "wb") as f:
            f.write(os.urandom(1000 + i) + bytes([i]) * 5000)
    with open("report.pdf", "wb") as f:
        f.write(b"%PDF-1.7 " + os.urandom(20000))
    os.chmod("report.pdf", 0o640)
    return n

def link(target, name):
    os.symlink(target, name)
    return name

def big(name, size):
    with open(name, "wb") as f:
        f.write(b"x" * size)
    return size

def write_zeros(name, megabytes):
    chunk = bytes(range(256)) * 4096  # 1 MiB
    with open(name, "wb") as f:
        for _ in range(megabytes):
            f.write(chunk)
    return megabytes

def fail():
    raise RuntimeError("diverged at the last step")

def block(folder):
    open(os.path.join(folder, "started"), "w").close()
    while not os.path.exists(os.path.join(folder, "go")):
        time.sleep(0.02)
    return "blocked"
'''


def solver_workflow(folder: Path, outputs: list[str], *extra: tuple[str, list[Any]],
                    failing: bool = True, name: str = "fem") -> caliber.Workflow:
    make_folder(folder, module="solver", source=SOLVER)
    tasks = [caliber.Task("solver:solve", name="solve", args=[6])]
    tasks += [caliber.Task(f"solver:{fn}", name=f"{fn}-{i}", args=args)
              for i, (fn, args) in enumerate(extra)]
    if failing:
        tasks.append(caliber.Task("solver:fail", name="check"))
    return caliber.Workflow(caliber.Process(tasks, name="FEM"), name, attachments=["solver.py"],
                            base_dir=folder, outputs=outputs)


def run_pinion(*args: str, env: dict[str, str] | None = None) -> str:
    pinion = start_pinion("p", "-a", "1", "-w", "0", *args, env=env)
    _out, err = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, err
    return err


def caliber_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=120)


def run_folder(workload_id: str) -> Path:
    results = caliber.get_results(workload_id)
    assert results.work_dir is not None
    return Path(results.work_dir)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): digest(p) for p in sorted(folder.rglob("*"))
            if p.is_file()}


# --- a pinion collects them, results files brings them back --------------------------------


def test_a_failed_runs_files_come_back_byte_identical(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "fields/**/*.vtu", "*.odb"]).queue(
        pinion="p")
    err = run_pinion()
    assert status_of(wid) == "failed"
    assert "kept 7 result files" in err
    source = run_folder(wid)
    listed = caliber_cli("results", "files", wid)
    assert listed.returncode == 0, listed.stderr
    assert "fields/step1/u0.vtu" in listed.stdout and "report.pdf" in listed.stdout
    assert "matched nothing: *.odb" in listed.stdout

    out = tmp_path / "back" / "here"  # made, parents too
    copied = caliber_cli("results", "files", wid[:6], "--to", str(out))
    assert copied.returncode == 0, copied.stderr
    assert "copied 7 files" in copied.stdout
    expected = {k: v for k, v in files_under(source).items()
                if k == "report.pdf" or k.endswith(".vtu")}
    assert len(expected) == 7 and files_under(out) == expected
    assert (out / "report.pdf").stat().st_mode & 0o777 == 0o640  # its mode kept

    results = caliber.get_results(wid)
    assert results.status.value == "failed" and results.error is not None
    assert [f.path for f in results.files] == sorted(expected)
    assert {f.path: f.sha256 for f in results.files} == expected
    assert results.files_unmatched == ["*.odb"]


@pytest.mark.parametrize("now", [False, True])
def test_a_cancelled_runs_files_are_kept(tmp_path: Path, now: bool) -> None:
    folder = tmp_path / "wf"
    wid = solver_workflow(folder, ["report.pdf", "fields"], ("block", [str(folder)])).queue(
        pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "--lease", "0.3")
    try:
        wait_for(lambda: (folder / "started").exists(), what="the blocking task to start")
        asked = caliber_cli("queue", "cancel", wid, *(["--now"] if now else []))
        assert asked.returncode == 0, asked.stderr
        if not now:  # it stops after the running task: let that one end
            wait_for(lambda: "cancelled by" in workload_line(pinion, tmp_path / "pinion.log"),
                     what="the pinion to learn of the cancel")
            (folder / "go").touch()
        wait_for(lambda: status_of(wid) == "cancelled", what="the workload to be cancelled")
    finally:
        stop(pinion)
    results = caliber.get_results(wid)
    assert results.status.value == "cancelled"
    assert len(results.files) == 7 and "report.pdf" in [f.path for f in results.files]


def test_a_task_past_its_time_limit_keeps_the_files_made_so_far(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    make_folder(folder, module="solver", source=SOLVER)
    tasks = [caliber.Task("solver:solve", name="solve", args=[2]),
             caliber.Task("solver:block", name="block", args=[str(folder)], timeout=0.5)]
    wid = caliber.Workflow(caliber.Process(tasks), "limited", attachments=["solver.py"],
                           base_dir=folder, outputs=["**/*.vtu", "report.pdf"]).queue(pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    assert results.status.value == "failed" and results.error is not None
    assert "block" in (results.error.task or "")
    assert [f.path for f in results.files] == ["fields/step1/u0.vtu", "fields/step2/u1.vtu",
                                               "report.pdf"]


def test_listing_and_copying_as_json_and_never_over_a_file(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf"], failing=False).queue(pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    shown = json.loads(caliber_cli("results", "files", results.id, "--json").stdout)
    assert shown["results"] == results.id and shown["workload_id"] == wid
    [record] = shown["files"]
    assert set(record) == {"path", "size", "sha256", "mode"}
    assert record["path"] == "report.pdf" and record["size"] == 20009

    out = tmp_path / "out"
    out.mkdir()
    (out / "report.pdf").write_bytes(b"mine")
    refused = caliber_cli("results", "files", wid, "--to", str(out))
    assert refused.returncode == 2 and "exists; nothing was written" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    assert (out / "report.pdf").read_bytes() == b"mine"
    forced = json.loads(caliber_cli("results", "files", wid, "--to", str(out), "--force",
                                    "--json").stdout)
    assert forced["written"] == [str(out / "report.pdf")]
    assert digest(out / "report.pdf") == record["sha256"]
    assert sorted(os.listdir(out)) == ["report.pdf"]  # no temporary file left

    bad = caliber_cli("results", "files", wid, "--force")
    assert bad.returncode == 2 and "--force goes with --to" in bad.stderr
    missing = caliber_cli("results", "files", "nosuchid")
    assert missing.returncode == 2 and missing.stderr.startswith("caliber: error:")


def test_links_out_of_the_run_folder_are_not_collected(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["*.txt", "fields/*/*.vtu"],
                          ("link", ["/etc/passwd", "passwd.txt"]),
                          ("link", ["/etc/passwd", "fields/step1/evil.vtu"]),
                          failing=False).queue(pinion="p")
    err = run_pinion()
    results = caliber.get_results(wid)
    assert results.ok
    assert [f.path for f in results.files if "passwd" in f.path or "evil" in f.path] == []
    assert {s.path for s in results.files_skipped} == {"passwd.txt", "fields/step1/evil.vtu"}
    assert all("/etc/passwd" in s.reason for s in results.files_skipped)
    assert "result file passwd.txt not kept: a symbolic link" in err
    listed = caliber_cli("results", "files", wid).stdout
    assert "not kept: passwd.txt: a symbolic link (to /etc/passwd)" in listed
    out = tmp_path / "out"
    caliber_cli("results", "files", wid, "--to", str(out))
    passwd = Path("/etc/passwd").read_bytes()
    assert all(p.read_bytes() != passwd for p in out.rglob("*") if p.is_file())


def test_a_file_over_the_limit_is_reported_and_the_run_keeps_its_status(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "big.bin", "*.vtu"],
                          ("big", ["big.bin", 50_000]), failing=False).queue(pinion="p")
    err = run_pinion(env={"CALIBER_OUTPUT_MAX": "30000"})
    results = caliber.get_results(wid)
    assert results.ok  # a file not kept does not fail the run
    assert [f.path for f in results.files] == ["report.pdf"]
    [skipped] = results.files_skipped
    assert skipped.path == "big.bin"
    assert skipped.reason == ("50.0 kB, over the limit of 30000 bytes per file "
                              "(CALIBER_OUTPUT_MAX)")
    assert "result file big.bin not kept: 50.0 kB" in err
    assert "not kept: big.bin: 50.0 kB, over" in caliber_cli("results", "files", wid).stdout
    assert results.files_unmatched == ["*.vtu"]
    shown = caliber_cli("results", "show", wid).stdout
    assert "files: 1 kept (20.0 kB), 1 not kept, 1 pattern(s) matched nothing" in shown


def test_the_total_limit_keeps_what_fits_in_path_order(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["fields/**"], failing=False).queue(pinion="p")
    run_pinion(env={"CALIBER_OUTPUT_TOTAL_MAX": "13000"})
    results = caliber.get_results(wid)
    assert [f.path for f in results.files] == ["fields/step1/u0.vtu", "fields/step1/u2.vtu"]
    assert len(results.files_skipped) == 4
    assert all("CALIBER_OUTPUT_TOTAL_MAX" in s.reason for s in results.files_skipped)


def test_limits_are_sizes_and_zero_is_no_limit(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "big.bin"],
                          ("big", ["big.bin", 50_000]), failing=False).queue(pinion="p")
    run_pinion(env={"CALIBER_OUTPUT_MAX": "40K", "CALIBER_OUTPUT_TOTAL_MAX": "0"})
    results = caliber.get_results(wid)
    assert [f.path for f in results.files] == ["report.pdf"]
    assert results.files_skipped[0].reason.endswith("over the limit of 40K per file "
                                                    "(CALIBER_OUTPUT_MAX)")
    again = solver_workflow(tmp_path / "wf2", ["report.pdf", "big.bin"],
                            ("big", ["big.bin", 50_000]), failing=False).queue(pinion="p")
    run_pinion(env={"CALIBER_OUTPUT_MAX": "0", "CALIBER_OUTPUT_TOTAL_MAX": "1M"})
    assert [f.path for f in caliber.get_results(again).files] == ["big.bin", "report.pdf"]


@pytest.mark.parametrize("value", ["lots", "-1", "2048T", "1.5G"])
def test_a_bad_limit_is_one_line_naming_the_variable(value: str) -> None:
    pinion = start_pinion("p", "-a", "1", "-w", "0", env={"CALIBER_OUTPUT_MAX": value})
    _out, err = pinion.communicate(timeout=60)
    assert pinion.returncode == 2
    assert err.strip() == ("caliber: error: CALIBER_OUTPUT_MAX must be a size in bytes such as "
                           f"2G: 0 (no limit), or up to 1024T, got {value!r}")


def test_a_changed_file_list_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    """Someone who can write the store but has no key points a record at other bytes."""
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "fields/step1/u0.vtu"],
                          failing=False).queue(pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    other = results.files[0]
    forged = results.model_copy(update={"files": [
        results.files[1].model_copy(update={"sha256": other.sha256, "size": other.size}),
        results.files[0]]})
    with open_backend(local_target()) as backend:
        backend.conn.execute("UPDATE results SET body = ? WHERE id = ?",
                             (json.dumps(forged.to_json_dict()), results.id))
        backend.conn.commit()
    out = tmp_path / "out"
    refused = caliber_cli("results", "files", wid, "--to", str(out))
    assert refused.returncode == 1
    assert "are not signed with your key" in refused.stderr
    assert not out.exists()


# --- the Python side ---------------------------------------------------------------------


def test_the_results_object_saves_and_opens_its_files(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf", "fields"], failing=False).queue(
        pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    source = run_folder(wid)
    assert len(results.files) == 7
    with results.open_file("report.pdf") as f:
        assert f.read() == (source / "report.pdf").read_bytes()
    written = results.save_files(tmp_path / "py", names=["fields/step2/u1.vtu"])
    assert written == [tmp_path / "py" / "fields" / "step2" / "u1.vtu"]
    assert written[0].read_bytes() == (source / "fields/step2/u1.vtu").read_bytes()
    with pytest.raises(UsageError, match="exists"):
        results.save_files(tmp_path / "py")
    assert len(results.save_files(tmp_path / "py", force=True)) == 7
    with pytest.raises(NotFoundError, match=r"no file 'nope\.pdf'"):
        results.open_file("nope.pdf")
    [listed] = [r for r in caliber.results.api.list_results(local_target())
                if r.id == results.id]
    with listed.open_file("report.pdf") as f:
        assert f.read(9) == b"%PDF-1.7 "


def test_a_damaged_blob_never_reaches_the_reader(tmp_path: Path) -> None:
    wid = solver_workflow(tmp_path / "wf", ["report.pdf"], failing=False).queue(pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    with open_backend(local_target()) as backend:
        blob = backend.blobs.path(results.files[0].sha256)
    os.chmod(blob, 0o600)
    blob.write_bytes(b"%PDF-1.7 not what was collected")
    with pytest.raises(CaliberError, match="does not match"), \
            results.open_file("report.pdf") as f:
        f.read()
    with pytest.raises(CaliberError, match="does not match"):
        results.save_files(tmp_path / "out")
    assert not (tmp_path / "out" / "report.pdf").exists()


# --- workflow run, the file format, workflow show -------------------------------------------


def test_workflow_run_keeps_the_files_of_the_workflow_files_folder(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    solver_workflow(folder, ["report.pdf", "fields/step2/*.vtu"]).export(folder / "fem.json")
    ran = caliber_cli("workflow", "run", "fem.json", "--json", cwd=folder)
    assert ran.returncode == 1  # the last task fails: the files are kept all the same
    results = json.loads(ran.stdout)
    assert [f["path"] for f in results["files"]] == [
        "fields/step2/u1.vtu", "fields/step2/u3.vtu", "fields/step2/u5.vtu", "report.pdf"]
    out = tmp_path / "out"
    copied = caliber_cli("results", "files", results["id"], "--to", str(out))
    assert copied.returncode == 0, copied.stderr
    assert (out / "report.pdf").read_bytes() == (folder / "report.pdf").read_bytes()


def test_outputs_in_the_file_format_and_workflow_show(tmp_path: Path) -> None:
    folder = tmp_path / "wf"
    wf = solver_workflow(folder, ["./report.pdf", "fields//**/*.vtu"])
    assert wf.outputs == ["report.pdf", "fields/**/*.vtu"]
    wf.export(folder / "fem.json")
    document = json.loads((folder / "fem.json").read_text())
    assert document["outputs"] == ["report.pdf", "fields/**/*.vtu"]
    assert caliber.Workflow.load(folder / "fem.json").outputs == wf.outputs
    shown = caliber_cli("workflow", "show", str(folder / "fem.json"))
    assert "outputs" in shown.stdout and "fields/**/*.vtu" in shown.stdout

    document["outputs"] = ["../../etc/passwd"]
    (folder / "bad.json").write_text(json.dumps(document))
    refused = caliber_cli("workflow", "show", str(folder / "bad.json"))
    assert refused.returncode == 2
    assert "output pattern '../../etc/passwd' climbs out of the run folder" in refused.stderr

    del document["outputs"]  # a file of before: no outputs, and none are written back
    (folder / "old.json").write_text(json.dumps(document))
    old = caliber.Workflow.load(folder / "old.json")
    assert old.outputs == [] and "outputs" not in old.to_document()
    with pytest.raises(caliber.errors.WorkflowDefinitionError, match="absolute"):
        solver_workflow(folder, ["/etc/passwd"])


# --- big files: streamed, memory bounded ----------------------------------------------------

PEAK = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")


def peak_kib(*command: str, cwd: Path | None = None) -> int:
    """Run ``command`` and return the peak resident memory (KiB) of it and its children."""
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True,
                          text=True, cwd=cwd, timeout=600)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB: Linux")
def test_a_300_mb_result_file_round_trip_in_bounded_memory(tmp_path: Path) -> None:
    megabytes = 300
    wid = solver_workflow(tmp_path / "wf", ["fields/big.vtu"],
                          ("write_zeros", ["fields/big.vtu", megabytes]), failing=True).queue(
        pinion="p")
    pinion = peak_kib(sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1",
                      "-w", "0", "-q")
    results = caliber.get_results(wid)
    [record] = results.files
    assert record.size == megabytes * 2**20
    out = tmp_path / "out"
    fetcher = peak_kib(sys.executable, "-m", "caliber", "results", "files", wid, "--to",
                       str(out))
    source = run_folder(wid) / "fields/big.vtu"
    assert digest(out / "fields/big.vtu") == digest(source) == record.sha256
    print(f"peak memory: pinion {pinion / 1024:.0f} MiB, results files --to "
          f"{fetcher / 1024:.0f} MiB, for a {megabytes} MiB file")
    assert pinion < 100 * 1024 and fetcher < 100 * 1024  # KiB: a third of the file, at most


# --- prune: files stay while Results refer to them -------------------------------------------


def test_prune_keeps_the_files_while_their_results_exist(tmp_path: Path) -> None:
    first = solver_workflow(tmp_path / "a", ["report.pdf", "fields/step1/u0.vtu"], failing=False,
                            name="first").queue(pinion="p")
    run_pinion()
    [shared] = [f for f in caliber.get_results(first).files if f.path == "report.pdf"]
    report = (run_folder(first) / "report.pdf").read_bytes()  # prune removes the run folder
    second_folder = make_folder(tmp_path / "b", module="solver", source=SOLVER)
    (second_folder / "report.pdf").write_bytes(report)
    second = caliber.Workflow(caliber.Process([caliber.Task("solver:fail", name="check")]),
                              "second", attachments=["solver.py", "report.pdf"],
                              base_dir=second_folder, outputs=["*.pdf"]).queue(pinion="p")
    run_pinion()
    assert [f.sha256 for f in caliber.get_results(second).files] == [shared.sha256]
    with open_backend(local_target()) as backend:
        store = backend.blobs
    only_first = [f.sha256 for f in caliber.get_results(first).files if f != shared]

    with open_backend(local_target()) as backend:  # as if the pinions had stored them long ago
        backend.conn.execute("UPDATE blob_refs SET at = at - 7 * 86400")
        backend.conn.commit()
    kept = caliber_cli("results", "prune", "--older-than", "1d")  # nothing is that old
    assert kept.returncode == 0, kept.stderr
    assert store.has_blob(shared.sha256) and all(store.has_blob(s) for s in only_first)
    assert caliber_cli("results", "files", first, "--to", str(tmp_path / "o1")).returncode == 0

    import time
    time.sleep(1.1)
    pruned = caliber_cli("results", "prune", "--older-than", "1s", "--workflow", "first")
    assert pruned.returncode == 0, pruned.stderr
    assert not any(store.has_blob(s) for s in only_first)  # only those Results referred to it
    assert store.has_blob(shared.sha256)  # the second Results still refer to it
    back = caliber_cli("results", "files", second, "--to", str(tmp_path / "o2"))
    assert back.returncode == 0, back.stderr
    assert (tmp_path / "o2" / "report.pdf").read_bytes() == report
    caliber_cli("results", "prune", "--older-than", "1s")
    assert not store.has_blob(shared.sha256)
