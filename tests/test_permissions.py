"""Caliber's folders and files are the user's alone (issue 20, case 3): whatever the umask,
everything Caliber makes is 0700 (folders) or 0600 (files), what a workload writes follows the
umask, another user cannot plant a module where a workload imports from, and a data folder of
another user is refused. The commands run as real processes under umask 000."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import caliber
from caliber.pinion.loop import Pinion, PinionConfig
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from tests.pinion_helpers import make_folder

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file permissions")


def _other_user() -> tuple[int, int] | None:
    """``nobody``'s uid and gid, when this test runs as root and can act as them."""
    if os.geteuid() != 0:
        return None
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        return None
    return entry.pw_uid, entry.pw_gid


NOBODY = _other_user()
as_root = pytest.mark.skipif(NOBODY is None, reason="needs root and a user 'nobody'")

PERMFUNCS = '''
import os, time


def write_some():
    """What a workload writes in its run folder: it follows the umask."""
    with open("by-task.txt", "w") as f:
        f.write("mine")
    os.mkdir("by-task")
    with open(os.path.join("by-task", "inner.txt"), "w") as f:
        f.write("mine")
    return "written"


def staged(timeout=60):
    """The next run's folder, which the pinion stages beside this one while it runs."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = [n for n in os.listdir("..") if n.startswith(".next-")]
        if found:
            return os.path.abspath(os.path.join("..", found[0]))
        time.sleep(0.01)
    raise RuntimeError("no staged run folder")


def staged_mode():
    return stat_mode(staged())


def stat_mode(path):
    return os.stat(path).st_mode & 0o7777


def plant(uid, gid):
    """Another user tries to put subprocess.py where the next workload imports from."""
    import subprocess
    folder = staged()
    done = subprocess.run(
        ["sh", "-c", 'echo "PLANTED = True" > "$1/subprocess.py"', "sh", folder],
        user=uid, group=gid, extra_groups=[], capture_output=True)
    return done.returncode


def nap(seconds):
    time.sleep(seconds)  # the pinion writes the progress file while a task runs on


def boom():
    raise ValueError("burnt")  # the run folder gets a traceback file


def imports_subprocess():
    import subprocess
    return getattr(subprocess, "PLANTED", False)
'''


def under_umask(umask: str, *command: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """``command`` run by a shell that set the umask first."""
    return subprocess.run(["sh", "-c", f'umask {umask} && exec "$@"', "sh", *command],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300"} if env is None else env)


def caliber_000(*args: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """A caliber command run under umask 000."""
    return under_umask("000", sys.executable, "-m", "caliber", *args, env=env)


def exported(folder: Path, tasks: list[tuple[str, list[object]]], name: str = "wf") -> Path:
    """A workflow of ``permfuncs`` tasks saved as ``NAME.json``, with the module and a data
    file in a subfolder attached."""
    make_folder(folder, module="permfuncs", source=PERMFUNCS)
    (folder / "data").mkdir(exist_ok=True)
    (folder / "data" / "in.txt").write_text("42")
    items = [caliber.Task(f"permfuncs:{fn}", name=f"{fn}-{i}", args=args)
             for i, (fn, args) in enumerate(tasks)]
    wf = caliber.Workflow(caliber.Process(items), "perm",
                          attachments=["permfuncs.py", "data/in.txt"], base_dir=folder)
    return wf.export(folder / f"{name}.json")


def modes(root: Path) -> Iterator[tuple[Path, int]]:
    yield root, stat.S_IMODE(root.lstat().st_mode)
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base, name)
            yield path, stat.S_IMODE(path.lstat().st_mode)


def test_under_umask_000_caliber_makes_its_folders_0700_and_files_0600(
    tmp_path: Path, caliber_home: Path
) -> None:
    path = exported(tmp_path / "wf", [("write_some", []), ("staged_mode", [])])
    failing = exported(tmp_path / "wf", [("nap", [1.5]), ("boom", [])], "failing")
    ids = []
    for wf in (path, path, failing):  # the second runs in the folder staged while the first ran
        queued = caliber_000("workflow", "queue", str(wf), "-p", "p")
        assert queued.returncode == 0, queued.stderr
        ids.append(queued.stdout.strip())
    pinion = caliber_000("pinion", "init", "p", "-a", "1", "-w", "0")
    assert pinion.returncode == 0, pinion.stderr

    for wid in ids[:2]:
        results = caliber.get_results(wid)
        assert results.ok, results.error
        assert results["staged_mode-1"] == 0o700  # made private in one step, under umask 000
    assert caliber.get_results(ids[2]).status == "failed"
    by_task = {"by-task.txt": 0o666, "by-task": 0o777, "inner.txt": 0o666}
    seen = {}
    for found, mode in modes(caliber_home):
        seen[found.relative_to(caliber_home).as_posix()] = mode
        if found.name in by_task:  # what the workload wrote: the umask's
            assert mode == by_task[found.name], found
        else:
            assert mode == (0o700 if found.is_dir() else 0o600), (found, oct(mode))
    folders = [f"runs/p/{wid}-1" for wid in ids[:2]]
    failed = f"runs/p/{ids[2]}-1"
    expected = {".", "caliber.db", "secret.key", "runs", "runs/p",
                f"{failed}/caliber-progress.json", f"{failed}/caliber-traceback.txt"} | {
        f"{f}/{name}" for f in folders
        for name in ("output.log", "permfuncs.py", "data", "data/in.txt", "by-task.txt",
                     "by-task/inner.txt")}
    assert expected <= set(seen), sorted(set(seen))


def test_the_queue_database_and_its_wal_and_shm_files_are_0600(caliber_home: Path) -> None:
    code = ("from caliber.paths import database_path\n"
            "from caliber.queue.sqlite.schema import connect\n"
            "conn = connect(database_path())\n"
            "conn.execute('SELECT count(*) FROM workloads').fetchone()\n"
            "import os\n"
            "for suffix in ('', '-wal', '-shm'):\n"
            "    print(suffix, oct(os.stat(str(database_path()) + suffix).st_mode & 0o777))\n")
    done = under_umask("000", sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0o600", "-wal", "0o600", "-shm", "0o600"]
    assert stat.S_IMODE(caliber_home.stat().st_mode) == 0o700


def test_each_level_of_a_new_data_folder_is_0700(tmp_path: Path) -> None:
    home = tmp_path / "new" / "deeper" / "home"
    done = caliber_000("queue", "list", env={**os.environ, "CALIBER_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    for folder in (tmp_path / "new", tmp_path / "new" / "deeper", home):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_the_platforms_data_and_config_folders_are_0700(tmp_path: Path) -> None:
    """Without CALIBER_HOME: the user data folder (queue) and config folder (key)."""
    path = exported(tmp_path / "wf", [("write_some", [])])
    env = {k: v for k, v in os.environ.items() if k != "CALIBER_HOME"}
    env |= {"XDG_DATA_HOME": str(tmp_path / "xdg" / "data"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg" / "config")}
    done = caliber_000("workflow", "queue", str(path), "-p", "p", env=env)
    assert done.returncode == 0, done.stderr
    made = dict(modes(tmp_path / "xdg"))
    store = tmp_path / "xdg" / "data" / "caliber" / "caliber.db-blobs"  # the attachments
    assert {p for p in made if store not in p.parents} == {tmp_path / "xdg" / p for p in (
        "", "data", "data/caliber", "data/caliber/caliber.db", "data/caliber/caliber.db-blobs",
        "config", "config/caliber", "config/caliber/secret.key")}
    assert any(p.parent.parent == store for p in made)
    assert all(mode == (0o700 if p.is_dir() else 0o600) for p, mode in made.items()), made


def test_the_speckle_checkpoint_cache_is_private(caliber_home: Path) -> None:
    code = ("from caliber.queue.speckle.checkpoint import ChunkCache\n"
            "ChunkCache.of('host', 'project', 'model').put(\n"
            "    {'abc': {'id': 'abc', 'caliber': 'queue checkpoint 1'}})\n")
    done = under_umask("000", sys.executable, "-c", code)
    assert done.returncode == 0, done.stderr
    made = dict(modes(caliber_home))
    assert len(made) == 4 and any(p.name == "abc.json" for p in made)  # home, cache, key, file
    assert all(mode == (0o700 if p.is_dir() else 0o600) for p, mode in made.items()), made


def test_a_task_writes_with_the_umask_of_its_pinion(tmp_path: Path) -> None:
    """The umask is never changed: under 027 a task's file is 0640, its folder 0750."""
    path = exported(tmp_path / "wf", [("write_some", [])])
    assert caliber.Workflow.load(path).queue(pinion="p")
    pinion = under_umask("027", sys.executable, "-m", "caliber", "pinion", "init", "p", "-a",
                         "1", "-w", "0")
    assert pinion.returncode == 0, pinion.stderr
    [wid] = _ids()
    work_dir = Path(caliber.get_results(wid).work_dir or "")
    assert stat.S_IMODE((work_dir / "by-task.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((work_dir / "by-task").stat().st_mode) == 0o750
    assert stat.S_IMODE(work_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((work_dir / "output.log").stat().st_mode) == 0o600


def _ids() -> list[str]:
    with open_backend(local_target()) as backend:
        return [w.id for w in backend.list_workloads()]


def test_an_older_callers_open_folders_are_tightened_quietly(
    tmp_path: Path, caliber_home: Path
) -> None:
    """An older Caliber made its folders 0755 (or 0777 under umask 000): they are the
    user's own, so a command makes them 0700 and says nothing of it."""
    path = exported(tmp_path / "wf", [("write_some", [])])
    for folder in (caliber_home, caliber_home / "runs", caliber_home / "runs" / "p"):
        folder.mkdir(exist_ok=True)
        folder.chmod(0o777)
    queued = caliber_000("workflow", "queue", str(path), "-p", "p")
    assert queued.returncode == 0 and queued.stderr == ""
    pinion = caliber_000("pinion", "init", "p", "-a", "1", "-w", "0")
    assert pinion.returncode == 0, pinion.stderr
    assert "chmod" not in pinion.stderr and "runs folder" not in pinion.stderr
    for folder in (caliber_home, caliber_home / "runs", caliber_home / "runs" / "p"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder


def test_a_leftover_staged_folder_holding_a_file_is_never_used(
    tmp_path: Path, caliber_home: Path
) -> None:
    """A ``.next-PID`` folder of this process id, left by an older Caliber that made it
    0777, with a module in it: the pinion makes a fresh run folder instead of reusing it."""
    path = exported(tmp_path / "wf", [("imports_subprocess", [])])
    wids = [caliber.Workflow.load(path).queue(pinion="p") for _ in range(2)]
    leftover = caliber_home / "runs" / "p" / f".next-{os.getpid()}"
    leftover.mkdir(parents=True)
    (leftover / "subprocess.py").write_text("PLANTED = True\n")
    with open_backend(local_target()) as backend:
        Pinion(PinionConfig(name="p", attempts=1, wait=0), backend).run()
    assert [caliber.get_results(w)["imports_subprocess-0"] for w in wids] == [False, False]


# --- another user ------------------------------------------------------------------------


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary folder other users can pass through (pytest's own are 0700)."""
    folder = Path(tempfile.mkdtemp(prefix="caliber-perms-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@as_root
def test_another_user_cannot_plant_a_module_in_the_staged_folder(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attack of issue 20: under umask 000 the staged ``.next-PID`` folder was 0777, and
    another user's ``subprocess.py`` in it was imported by the next workload."""
    assert NOBODY is not None
    home = shared_tmp / "home"
    monkeypatch.setenv("CALIBER_HOME", str(home))
    planting = exported(shared_tmp / "wf", [("plant", list(NOBODY))], "plant")
    importing = exported(shared_tmp / "wf", [("imports_subprocess", [])], "import")
    first = caliber_000("workflow", "queue", str(planting), "-p", "p").stdout.strip()
    second = caliber_000("workflow", "queue", str(importing), "-p", "p").stdout.strip()
    pinion = caliber_000("pinion", "init", "p", "-a", "1", "-w", "0")
    assert pinion.returncode == 0, pinion.stderr
    assert caliber.get_results(first)["plant-0"] != 0  # refused: the folder is not theirs
    assert caliber.get_results(second)["imports_subprocess-0"] is False


@as_root
def test_a_data_folder_of_another_user_is_refused(caliber_home: Path) -> None:
    assert NOBODY is not None
    caliber_home.mkdir()
    os.chown(caliber_home, *NOBODY)
    for args in (("queue", "list"), ("pinion", "init", "p", "-a", "1", "-w", "0")):
        done = caliber_000(*args)
        assert done.returncode == 2 and done.stdout == ""
        assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
        assert f"CALIBER_HOME {caliber_home} belongs to another user (nobody)" in done.stderr
        assert f"chown -R root {caliber_home} && chmod 700 {caliber_home}" in done.stderr
    assert os.listdir(caliber_home) == []  # nothing written in it


@as_root
def test_a_pinions_runs_folder_of_another_user_is_refused(
    tmp_path: Path, caliber_home: Path
) -> None:
    assert NOBODY is not None
    path = exported(tmp_path / "wf", [("write_some", [])])
    wid = caliber_000("workflow", "queue", str(path), "-p", "p").stdout.strip()
    runs = caliber_home / "runs" / "p"
    runs.mkdir(parents=True, mode=0o700)
    os.chown(runs, *NOBODY)
    done = caliber_000("pinion", "init", "p", "-a", "1", "-w", "0")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert f"pinion p's runs folder {runs} belongs to another user (nobody)" in done.stderr
    with open_backend(local_target()) as backend:
        assert backend.get(wid).status.value == "queued"  # nothing ran
    assert os.listdir(runs) == []
