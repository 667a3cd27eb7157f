"""``.caliber/.env`` is used only when it is your own (a regular file, small, owned by you and
writable by you alone, in a folder that is yours alone); any other is ignored with one line on
stderr, and the command goes on with your own settings: a shared folder's file never picks
your key, your queue or your data folder, and a FIFO, a device or a huge file never hangs or
exhausts a command. Each case runs ``caliber`` as a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_queue_api import make_workflow

THEIR_KEY = "their-key-0123456789abcdef"
ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
POSIX = os.name == "posix"


def nobody() -> int:
    import pwd

    return pwd.getpwnam("nobody").pw_uid


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A folder someone else may have written to: ``.caliber/.env`` picks their data folder
    and their key (when it is used)."""
    folder = tmp_path / "shared"
    (folder / ".caliber").mkdir(parents=True, mode=0o755)
    os.chmod(folder / ".caliber", 0o755)
    make_workflow(folder / "wf").export(folder / "wf.json")
    return folder


def their_settings(tmp_path: Path) -> str:
    return f"CALIBER_HOME={tmp_path / 'theirs'}\nCALIBER_SECRET_KEY={THEIR_KEY}\n"


def user_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user who set no CALIBER_* variable: Caliber's folders are then
    the platform's, here under a temporary HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALIBER_")}
    me = tmp_path / "me"
    env.update(HOME=str(me), XDG_DATA_HOME=str(me / "data"),
               XDG_CONFIG_HOME=str(me / "config"), NO_COLOR="1")
    return env


def caliber(folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=60)


def write_env(folder: Path, text: str, mode: int = 0o600) -> Path:
    path = folder / ".caliber" / ".env"
    path.write_text(text)
    os.chmod(path, mode)
    return path


def others_file(folder: Path, tmp_path: Path) -> str:
    os.chown(write_env(folder, their_settings(tmp_path), 0o644), nobody(), -1)
    return "it belongs to nobody, not to you (root); only settings of your own are used"


def others_folder(folder: Path, tmp_path: Path) -> str:
    write_env(folder, their_settings(tmp_path))
    os.chown(folder / ".caliber", nobody(), -1)
    return "its folder .caliber belongs to nobody, not to you (root)"


def group_writable(folder: Path, tmp_path: Path) -> str:
    write_env(folder, their_settings(tmp_path), 0o664)
    return "it is writable by its group (make it yours alone: chmod go-w .caliber/.env)"


def others_writable(folder: Path, tmp_path: Path) -> str:
    write_env(folder, their_settings(tmp_path), 0o646)
    return "it is writable by others (make it yours alone: chmod go-w .caliber/.env)"


def open_folder(folder: Path, tmp_path: Path) -> str:
    write_env(folder, their_settings(tmp_path))
    os.chmod(folder / ".caliber", 0o777)
    return "its folder .caliber is writable by its group and others"


def group_folder(folder: Path, tmp_path: Path) -> str:
    write_env(folder, their_settings(tmp_path))
    os.chmod(folder / ".caliber", 0o775)
    return "its folder .caliber is writable by its group (make it yours alone: chmod go-w"


def fifo(folder: Path, tmp_path: Path) -> str:
    os.mkfifo(folder / ".caliber" / ".env")
    return "it is a FIFO (named pipe), not a regular file"


def dev_zero(folder: Path, tmp_path: Path) -> str:
    (folder / ".caliber" / ".env").symlink_to("/dev/zero")
    return "it is a character device, not a regular file"


def huge_line(folder: Path, tmp_path: Path) -> str:
    # a comment line of 50 MB after the settings (the code before read it, slowly, at every
    # lookup, and used the settings above it)
    write_env(folder, their_settings(tmp_path) + "# " + "x" * 50_000_000 + "\n")
    return " bytes, more than a settings file holds (at most 64 KiB)"


def a_folder(folder: Path, tmp_path: Path) -> str:
    (folder / ".caliber" / ".env").mkdir()
    return "it is a folder, not a regular file"


ROOT_ONLY = pytest.mark.skipif(not ROOT, reason="making a file of another user needs root")
POSIX_ONLY = pytest.mark.skipif(not POSIX, reason="owners and modes are POSIX's")
CASES = [
    pytest.param(others_file, id="another-users-file", marks=ROOT_ONLY),
    pytest.param(others_folder, id="another-users-folder", marks=ROOT_ONLY),
    pytest.param(group_writable, id="group-writable", marks=POSIX_ONLY),
    pytest.param(others_writable, id="others-writable", marks=POSIX_ONLY),
    pytest.param(open_folder, id="folder-writable-by-all", marks=POSIX_ONLY),
    pytest.param(group_folder, id="folder-writable-by-group", marks=POSIX_ONLY),
    pytest.param(fifo, id="fifo", marks=POSIX_ONLY),
    pytest.param(dev_zero, id="link-to-dev-zero", marks=POSIX_ONLY),
    pytest.param(huge_line, id="50-MB-line"),
    pytest.param(a_folder, id="a-folder"),
]


@pytest.mark.parametrize("make", CASES)
def test_a_settings_file_not_your_own_is_ignored_in_one_line(
    shared: Path, tmp_path: Path, make: Callable[[Path, Path], str]
) -> None:
    """Queueing in the shared folder: the workload goes to your own queue, signed with your
    own key (a key file is made for you), the file's folder and key are not used, and one
    line says why; the command neither hangs nor fails."""
    reason = make(shared, tmp_path)
    me = tmp_path / "me"
    done = caliber(shared, user_env(tmp_path), "workflow", "queue", "wf.json", "-p", "p")
    assert done.returncode == 0, done.stderr
    warned = [line for line in done.stderr.splitlines() if ".caliber/.env" in line]
    assert len(warned) == 1, done.stderr
    assert warned[0].startswith("ignored .caliber/.env: ") and reason in warned[0]
    assert (me / "data" / "caliber" / "caliber.db").is_file()
    assert (me / "config" / "caliber" / "secret.key").is_file()  # your key, not theirs
    assert not (tmp_path / "theirs").exists()
    listed = caliber(shared, user_env(tmp_path), "queue", "list", "--json")
    assert '"secret_ok": true' in listed.stdout
    assert listed.stderr.count("ignored .caliber/.env") == 1  # once per command


def test_your_own_settings_file_is_used(shared: Path, tmp_path: Path) -> None:
    """The same file, yours and writable by you alone: its folder and key are used (so the
    test above can fail), and nothing is printed about it."""
    write_env(shared, their_settings(tmp_path))
    done = caliber(shared, user_env(tmp_path), "workflow", "queue", "wf.json", "-p", "p")
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert (tmp_path / "theirs" / "caliber.db").is_file()
    assert not (tmp_path / "me").exists()


@ROOT_ONLY
def test_a_pinion_in_a_shared_folder_never_runs_their_workloads(
    shared: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, case 2: their ``.env`` named their queue and their key, and your pinion ran
    their workloads as you. Now it looks at your own (empty) queue, and theirs is untouched."""
    from caliber.queue.registry import open_backend
    from caliber.queue.target import local_target

    monkeypatch.setenv("CALIBER_HOME", str(tmp_path / "theirs"))
    monkeypatch.setenv("CALIBER_SECRET_KEY", THEIR_KEY)
    theirs = make_workflow(tmp_path / "their-wf").queue(pinion="p")
    others_file(shared, tmp_path)
    done = caliber(shared, user_env(tmp_path), "pinion", "init", "p", "-a", "1", "-w", "0")
    assert done.returncode == 0, done.stderr
    assert "pinion p: ran 0" in done.stdout
    with open_backend(local_target()) as backend:  # their queue, as they see it
        assert backend.get(theirs).status == "queued"


def test_a_bad_line_in_your_own_file_stops_the_command_without_showing_it(
    shared: Path, tmp_path: Path
) -> None:
    write_env(shared, f"CALIBER_PINION_WAIT=1\nCALIBER_SECRET_KEY {THEIR_KEY}\n")
    done = caliber(shared, user_env(tmp_path), "queue", "list")
    assert done.returncode == 2
    assert done.stderr == "caliber: error: .caliber/.env, line 2: expected KEY=VALUE\n"
    assert not (tmp_path / "me").exists()


def test_the_file_is_read_again_when_it_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read once while it stays the same; a change (same size, same second) is seen."""
    from caliber.settings import lookup

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".caliber").mkdir(mode=0o700)
    write_env(tmp_path, "CALIBER_PINION_WAIT=1\n")
    assert lookup("CALIBER_PINION_WAIT") == "1"
    write_env(tmp_path, "CALIBER_PINION_WAIT=2\n")
    assert lookup("CALIBER_PINION_WAIT") == "2"
    os.chmod(tmp_path / ".caliber" / ".env", 0o666)
    assert lookup("CALIBER_PINION_WAIT") is None


def test_read_once_while_unchanged_and_again_when_changed_within_the_clocks_grain(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file's times can be too coarse to show a second write in the same tick: a file
    changed just before it was read is read again; one unchanged for longer is read once."""
    from caliber import settings_file
    from caliber.settings import lookup

    monkeypatch.chdir(tmp_path)
    (tmp_path / ".caliber").mkdir(mode=0o700)
    write_env(tmp_path, "CALIBER_PINION_WAIT=1\n")
    key, changed = settings_file.identity()
    monkeypatch.setattr(settings_file, "identity", lambda: (key, changed))  # the same stat
    assert lookup("CALIBER_PINION_WAIT") == "1"
    write_env(tmp_path, "CALIBER_PINION_WAIT=2\n")
    assert lookup("CALIBER_PINION_WAIT") == "2"  # changed just now: read again
    monkeypatch.setattr(settings_file, "identity", lambda: (key, 0))  # long unchanged
    assert lookup("CALIBER_PINION_WAIT") == "2"
    write_env(tmp_path, "CALIBER_PINION_WAIT=3\n")  # (its stat would say so: not read here)
    assert lookup("CALIBER_PINION_WAIT") == "2"


@POSIX_ONLY
def test_a_caliber_folder_without_the_file_says_nothing(shared: Path, tmp_path: Path) -> None:
    os.chmod(shared / ".caliber", 0o777)
    done = caliber(shared, user_env(tmp_path), "queue", "list")
    assert (done.returncode, done.stderr) == (0, "")
