"""Names holding escape sequences, BEL, CR, line breaks or direction overrides never reach the
terminal as such: every human-facing output writes them as escapes (``\\x1b``), so they cannot
recolour, clear or ring the terminal, or forge a line; ``--json`` keeps them exactly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import caliber
from caliber.text import for_terminal, valid_unicode
from tests.pinion_helpers import make_folder

EVIL = "x\x1b[2J\x1b]0;owned\x07\rFORGED\n2026-01-01 00:00:00 pinion p: FORGED\u202e\x9b"
FORBIDDEN = ["\x1b", "\x07", "\r", "\u202e", "\x9b"]


def check_output(text: str) -> None:
    for char in FORBIDDEN:
        assert char not in text, (char, text)
    # The line break in a name never starts a line of its own (a traceback keeps the lines of
    # an exception message, indented or inside its panel's border).
    assert "FORGED\n2026" not in text and "FORGED\n│ 2026" not in text, text


def cli(*args: str, ok: bool = True) -> str:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, check=False, env={**os.environ, "COLUMNS": "200"},
                          cwd=Path(os.environ["CALIBER_HOME"]).parent)  # tmp: run writes there
    if ok:
        assert done.returncode == 0, done.stderr
    check_output(done.stdout)
    check_output(done.stderr)
    return done.stdout + done.stderr


@pytest.fixture
def evil_file(tmp_path: Path) -> Path:
    folder = make_folder(tmp_path / "wf", source=f"""
def echo(x):
    return x

def boom():
    raise ValueError({EVIL!r})
""")
    tasks = [caliber.Task("pinfuncs:echo", name=f"t {EVIL}", args=[EVIL]),
             caliber.Task("pinfuncs:boom", name="boom")]
    wf = caliber.Workflow(caliber.Process(tasks, name=f"p {EVIL}"), f"w {EVIL}",
                          attachments=["pinfuncs.py"], base_dir=folder,
                          description=f"d {EVIL}")
    return wf.export(folder / "evil.json")


def test_every_human_output_escapes_control_characters(evil_file: Path) -> None:
    for fmt in ("tree", "mermaid", "dot"):
        assert "\\x1b[2J" in cli("workflow", "show", str(evil_file), "--format", fmt)
    cli("workflow", "run", str(evil_file), ok=False)  # boom fails: exit 1, traceback shown
    wid = cli("workflow", "queue", str(evil_file), "-p", "p").split()[0]
    assert "\\x1b[2J" in cli("queue", "list")
    assert "\\x1b[2J" in cli("queue", "view", wid)
    log = cli("pinion", "init", "p", "-a", "1", "-w", "0")
    assert "\\x1b[2J" in log
    assert "\\x1b[2J" in cli("results", "list")
    results_id = json.loads(cli("results", "list", "--json"))[0]["id"]
    assert "\\x1b[2J" in cli("results", "show", results_id)
    assert json.loads(cli("queue", "view", wid, "--json"))["workflow"] == f"w {EVIL}"
    stored = json.loads(cli("results", "show", results_id, "--json"))
    assert stored["workflow"] == f"w {EVIL}" and stored["tasks"][0]["return"] == EVIL


def test_an_error_line_is_one_escaped_line(tmp_path: Path) -> None:
    out = cli("workflow", "show", str(tmp_path / f"no{EVIL}.json"), ok=False)
    assert len(out.strip().splitlines()) == 1 and out.startswith("caliber: error: ")


def test_text_helpers() -> None:
    shown = for_terminal("a\x1b[31mb\x07\r\n\t\u202e\udce9")
    assert shown == "a\\x1b[31mb\\x07\\r\\n\\t\\u202e\\xe9"
    assert for_terminal("line 1\n\tline 2\x1b", multiline=True) == "line 1\n\tline 2\\x1b"
    assert for_terminal("plain é 字") == "plain é 字"
    assert valid_unicode("caf\udce9 \ud800") == "caf\\xe9 \\ud800"
    assert valid_unicode("ok \x1b") == "ok \x1b"  # storing keeps controls: JSON escapes them


def test_queue_view_escapes_the_ids_read_from_the_queue(evil_file: Path) -> None:
    """The results id and the key id a pinion noted are plain columns of the local queue that
    anyone who can write the file can change: shown escaped like every other text."""
    import sqlite3

    wid = cli("workflow", "queue", str(evil_file), "-p", "p").split()[0]
    db = Path(os.environ["CALIBER_HOME"]) / "caliber.db"
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE workloads SET results_id = ?, secret_mismatch = ? WHERE id = ?",
                     (f"r {EVIL}", f"k {EVIL}", wid))
    conn.close()
    shown = cli("queue", "view", wid)
    assert shown.count("\\x1b[2J") >= 3  # the workflow name, the results id, the key id
