"""The benchmark suite still works: its quick mode runs once and writes a report with every row.

No timing is asserted; the figures of a quick run mean nothing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.postgres_server import unavailable_reason

pytest.importorskip("huey", reason="the bench extra is not installed (pip install -e '.[bench]')")
pytest.importorskip("rq", reason="the bench extra is not installed (pip install -e '.[bench]')")
pytest.importorskip("psutil", reason="the bench extra is not installed (pip install -e '.[bench]')")
pytest.importorskip("procrastinate",
                    reason="the bench extra is not installed (pip install -e '.[bench]')")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_mode_writes_every_row(tmp_path: Path, caliber_home: Path) -> None:
    from bench.run import expected_row_ids

    report, data = tmp_path / "BENCHMARKS.md", tmp_path / "results.json"
    cmd = [sys.executable, "-m", "bench.run", "--quick", "--no-install",
           "--report", str(report), "--data", str(data)]
    have_redis = shutil.which("redis-server") is not None
    have_postgres = unavailable_reason() is None
    if not have_redis:
        cmd.append("--skip-rq")
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    rows = {row["id"]: row for row in json.loads(data.read_text())["run"]["rows"]}
    assert sorted(rows) == sorted(expected_row_ids())
    for row_id, row in rows.items():
        if row_id.endswith("-rq") and not have_redis:
            assert "skip-rq" in row["unavailable"]
            continue
        if row_id.startswith("pg-") and not have_postgres:
            assert "PostgreSQL is not installed" in row["unavailable"]
            continue
        assert row["unavailable"] is None, (row_id, row["unavailable"])
        assert row["subject_stats"] is not None and row["baseline_stats"] is not None, row_id
    text = report.read_text()
    for heading in ("## Drain", "## End to end", "## Overhead", "## Queue operations per second",
                    "## caliber queue list", "## Start-up", "## Peak memory", "## Machine",
                    "## Method"):
        assert heading in text
    if not have_redis:
        pytest.skip("RQ rows not measured: redis-server is not installed (Debian package "
                    "redis-server); the rest of the quick run passed")
