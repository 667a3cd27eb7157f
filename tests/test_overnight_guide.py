"""docs/overnight.md, word for word, on the local queue and on a Speckle test server: the
analysis not before its time, the post-processing only after it completed and never after a
failed one, queue wait's exit codes, one webhook POST per ended workload (the post-processing
cancelled down the chain when its failed analysis is reset, which no pinion ran, too).

Two things of the guide are replaced, as its introduction says: ``22:00`` by a time a few
seconds ahead (ISO 8601 with its offset), and the webhook address by a local HTTP server's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.pinion_helpers import alive, wait_for
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_notify import Hook
from tests.walkthrough import Command, File, matches, script, walkthrough

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "overnight.md"
MARK = "<!-- overnight -->"
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures
GUIDE_HOOK = "https://hooks.slack.com/services/T0/B0/XYZ"
LEAD = 8  # seconds from now to the analysis's start time


def steps_for(hook: str, start: dt.datetime) -> list[Command | File]:
    steps = walkthrough(GUIDE.read_text(encoding="utf-8"), MARK)
    for step in steps:
        if isinstance(step, Command):
            step.line = (step.line.replace("--not-before 22:00",
                                           f"--not-before {start.isoformat()}")
                         .replace(GUIDE_HOOK, hook))
    return steps


def test_the_guide_is_there() -> None:
    steps = walkthrough(GUIDE.read_text(encoding="utf-8"), MARK)
    lines = [s.line for s in steps if isinstance(s, Command)]
    assert [s.name for s in steps if isinstance(s, File)] == ["beam.py", "define.py"]
    for part in ("--not-before 22:00", "--after $ANALYSIS", "queue wait $ANALYSIS $POST",
                 GUIDE_HOOK, "queue reset $BROKEN", "--timeout"):
        assert any(part in line for line in lines), part


def follow(tmp_path: Path, env: dict[str, str]) -> tuple[Hook, dt.datetime, list[Any]]:
    """Follow the guide in ``tmp_path/night`` with ``env``; every command must exit 0 and print
    what the guide says. Returns the hook, the start time given and the queue at the end."""
    hook = Hook()
    start = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=LEAD)).replace(microsecond=0)
    steps = steps_for(hook.url, start)
    folder = tmp_path / "night"
    folder.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {**env, "PATH": bin_dir + os.pathsep + env["PATH"], "COLUMNS": "120"}
    pinion_pid = tmp_path / "pinion.pid"
    text = script(steps, out).replace(
        "caliber pinion init night --forever > pinion.log 2>&1 &",
        f"caliber pinion init night --forever > pinion.log 2>&1 & echo $! > '{pinion_pid}'")
    shell = subprocess.Popen(["bash", "-c", text], cwd=folder, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             start_new_session=True)
    try:
        _, stderr = shell.communicate(timeout=90)  # within pytest-timeout's 120 s
        if shell.returncode == 0 and pinion_pid.exists():  # the guide's `kill %1` stops it:
            pid = int(pinion_pid.read_text())  # let it tell what it still has (its stop)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not alive(pid), timeout=15, what="the pinion to stop")
    finally:  # the guide stops its pinion; a step that failed or hung may not have
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        if pinion_pid.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pinion_pid.read_text()), signal.SIGKILL)
        shell.wait()
        hook.close()
    assert shell.returncode == 0, stderr
    for i, step in enumerate(steps):
        if isinstance(step, Command):
            output = (out / str(i)).read_text()
            code = int((out / f"{i}.rc").read_text())
            assert code == 0, f"$ {step.line}\n{output}\n{(folder / 'pinion.log').read_text()}"
            assert matches(step.expected, output), (
                f"$ {step.line}\nexpected:\n" + "\n".join(step.expected) + f"\ngot:\n{output}")
    listed = subprocess.run([sys.executable, "-m", "caliber", "queue", "list", "--json"],
                            cwd=folder, env=env, capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    return hook, start, json.loads(listed.stdout)


def check_the_night(hook: Hook, start: dt.datetime, rows: list[Any], env: dict[str, str],
                    folder: Path) -> None:
    import caliber

    by_workflow: dict[str, list[Any]] = {}
    for row in rows:
        by_workflow.setdefault(row["workflow"], []).append(row)
    analyses = sorted(by_workflow["analysis"], key=lambda r: r["created_at"])
    posts = sorted(by_workflow["post-processing"], key=lambda r: r["created_at"])
    assert [r["status"] for r in analyses] == ["completed"]  # the broken one was reset
    assert [r["status"] for r in posts] == ["completed", "cancelled"]
    assert posts[1]["results_id"] is None  # never ran after the failed analysis

    with pytest.MonkeyPatch.context() as patch:  # the guide's folder and settings, undone
        patch.chdir(folder)  # after (its .caliber/.env must not reach later tests' pinions)
        for name in set(os.environ) - set(env):
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        analysis = caliber.get_results(analyses[0]["id"])
        post = caliber.get_results(posts[0]["id"])
    assert analysis.started_at >= start  # not before its time
    assert post.started_at >= analysis.finished_at  # only after the analysis completed
    assert post["Report"]["ok"] is True

    told = [(b["caliber"]["id"], b["caliber"]["workflow"], b["caliber"]["status"])
            for b in hook.bodies]
    ended = [(r["id"], r["workflow"], r["status"]) for r in analyses + posts]
    failed = next(b for b in hook.bodies if b["caliber"]["status"] == "failed")["caliber"]
    ended.append((failed["id"], "analysis", "failed"))  # the broken one, reset since
    assert sorted(told) == sorted(ended)  # one POST per ended workload
    cancelled = next(b for b in hook.bodies if b["caliber"]["status"] == "cancelled")
    assert cancelled["text"] == (
        f"Caliber: post-processing ({posts[1]['id']}) cancelled before it ran (queued for "
        f"pinion night): upstream {failed['id']} was reset")


def test_the_guide_on_the_local_queue(tmp_path: Path, caliber_home: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CALIBER_HOME": str(caliber_home)}
    for name in ("CALIBER_QUEUE_URL", "CALIBER_SPECKLE_PROJECT", "CALIBER_NOTIFY_URL"):
        env.pop(name, None)
    hook, start, rows = follow(tmp_path, env)
    check_the_night(hook, start, rows, env, tmp_path / "night")
    assert list(home.iterdir()) == []


@pytest.mark.slow
@pytest.mark.speckle
def test_the_guide_on_a_speckle_queue(tmp_path: Path, caliber_home: Path,
                                      remote: Remote) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "CALIBER_HOME": str(caliber_home),
           "CALIBER_SPECKLE_PROJECT": remote.project, "CALIBER_SPECKLE_MODEL": "night"}
    env.pop("CALIBER_QUEUE_URL", None)
    env.pop("CALIBER_NOTIFY_URL", None)
    hook, start, rows = follow(tmp_path, env)
    check_the_night(hook, start, rows, env, tmp_path / "night")
