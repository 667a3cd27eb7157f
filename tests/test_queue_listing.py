"""The fast ``queue list`` path reads raw rows: it must say exactly what the Workload path says."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from caliber.errors import UsageError
from caliber.queue import api
from caliber.queue.listing import list_summaries
from tests.test_queue_api import make_workflow


def slow_summaries(**filters: object) -> list[dict[str, object]]:
    return [c.summary() for c in api.list_workloads(**filters)]  # type: ignore[arg-type]


def test_fast_summaries_equal_the_workload_summaries(tmp_path: Path, caliber_home: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    wf = make_workflow(tmp_path / "wf")
    ids = [wf.queue(pinion="p1") for _ in range(3)] + [wf.queue(pinion="p2")]
    monkeypatch.setenv("CALIBER_SECRET_KEY", "somebody-else-entirely-0123456789")
    foreign = wf.queue(pinion="p1")
    monkeypatch.delenv("CALIBER_SECRET_KEY")
    conn = sqlite3.connect(caliber_home / "caliber.db")
    body = json.loads(conn.execute("SELECT body FROM workloads WHERE id = ?",
                                   (ids[1],)).fetchone()[0])
    body["attachments"][0]["content"] += "\nimport os\n"  # tampered content, hash unchanged
    conn.execute("UPDATE workloads SET body = ? WHERE id = ?", (json.dumps(body), ids[1]))
    conn.commit()
    conn.close()
    fast, more = list_summaries()
    assert not more
    assert fast == slow_summaries()
    assert [s["secret_ok"] for s in fast] == [True, False, True, True, False]
    assert fast[-1]["id"] == foreign
    assert list_summaries(pinion="p2")[0] == slow_summaries(pinion="p2")
    assert list_summaries(status="queued", pinion="p1")[0] == slow_summaries(status="queued",
                                                                             pinion="p1")


def test_pages(tmp_path: Path) -> None:
    wf = make_workflow(tmp_path / "wf")
    ids = [wf.queue(pinion="p") for _ in range(5)]
    first, more = list_summaries(limit=2)
    assert [s["id"] for s in first] == ids[:2] and more
    last, more = list_summaries(limit=2, offset=4)
    assert [s["id"] for s in last] == ids[4:] and not more
    everything, more = list_summaries(limit=None)
    assert len(everything) == 5 and not more
    with pytest.raises(UsageError, match="unknown status"):
        list_summaries(status="sleeping")


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


def test_status_names_match_the_workload_statuses() -> None:
    from caliber.queue.listing import STATUSES
    from caliber.queue.workload import WorkloadStatus

    assert list(STATUSES) == [s.value for s in WorkloadStatus]
