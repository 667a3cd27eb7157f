"""``caliber queue list`` reads summaries (the backend's fast listing): they must say exactly
what the full Workloads say, and the path must stay free of pydantic and rich."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from caliber.errors import UsageError
from caliber.queue import api
from caliber.queue.target import local_target
from tests.test_queue_api import make_workflow


def summaries(**filters: object) -> tuple[list[dict[str, object]], bool]:
    found, more = api.list_summaries(local_target(), **filters)  # type: ignore[arg-type]
    return [s.to_dict() for s in found], more


def slow_summaries(**filters: object) -> list[dict[str, object]]:
    return [c.summary() for c in api.list_workloads(local_target(), **filters)]  # type: ignore[arg-type]


def test_summaries_equal_the_workload_summaries(tmp_path: Path, caliber_home: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make_workflow(tmp_path / "wf")
    ids = [wf.queue(pinion="p1") for _ in range(3)] + [wf.queue(pinion="p2")]
    monkeypatch.setenv("CALIBER_SECRET_KEY", "somebody-else-entirely-0123456789")
    foreign = wf.queue(pinion="p1")
    monkeypatch.delenv("CALIBER_SECRET_KEY")
    conn = sqlite3.connect(caliber_home / "caliber.db")
    body = json.loads(conn.execute("SELECT body FROM workloads WHERE id = ?",
                                   (ids[1],)).fetchone()[0])
    body["attachments"][0]["sha256"] = "0" * 64  # another file's bytes: not what was signed
    conn.execute("UPDATE workloads SET body = ? WHERE id = ?", (json.dumps(body), ids[1]))
    conn.execute("UPDATE workloads SET body = '{' WHERE id = ?", (ids[2],))  # damaged
    conn.commit()
    conn.close()
    fast, more = summaries()
    assert not more
    assert fast == slow_summaries()
    assert [s["secret_ok"] for s in fast] == [True, False, False, True, False]
    assert "damaged" in str(fast[2]["last_error"])
    assert fast[-1]["id"] == foreign
    assert summaries(pinion="p2")[0] == slow_summaries(pinion="p2")
    assert summaries(status="queued", pinion="p1")[0] == slow_summaries(status="queued",
                                                                        pinion="p1")


def test_pages(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    ids = [wf.queue(pinion="p") for _ in range(5)]
    first, more = summaries(limit=2)
    assert [s["id"] for s in first] == ids[:2] and more
    last, more = summaries(limit=2, offset=4)
    assert [s["id"] for s in last] == ids[4:] and not more
    everything, more = summaries(limit=None)
    assert len(everything) == 5 and not more
    with pytest.raises(UsageError, match="unknown status"):
        summaries(status="sleeping")


def test_cli_pages_and_says_so(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    for _ in range(3):
        wf.queue(pinion="p")
    run = [sys.executable, "-m", "caliber", "queue", "list"]
    out = subprocess.run([*run, "-n", "2"], capture_output=True, text=True, check=True).stdout
    assert out.count(" p ") == 2
    assert "--offset 2 for the next page" in out
    assert all(line == line.rstrip() for line in out.splitlines())
    out = subprocess.run([*run, "--all", "--json"], capture_output=True, text=True,
                         check=True).stdout
    assert len(json.loads(out)) == 3


def test_listing_loads_neither_pydantic_nor_rich(tmp_path: Path) -> None:
    """What keeps ``caliber queue list`` fast: it reads plain rows."""
    make_workflow(tmp_path / "wf").queue(pinion="p")
    script = (
        "import sys\n"
        "from caliber.cli import main\n"
        "try:\n"
        "    main(['queue', 'list', '--json'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print([m for m in ('pydantic', 'rich') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]"
    assert json.loads("\n".join(out.splitlines()[:-1]))[0]["pinion"] == "p"
