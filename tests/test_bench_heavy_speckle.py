"""The Speckle rows of the heavy-attachment benchmark still run (no figure asserted: a tiny
file, once)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("specklepy")


def test_the_speckle_send_rows_are_measured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            caliber_home: Path) -> None:
    from bench import heavy_speckle

    monkeypatch.setattr(heavy_speckle, "QUICK_SIZE", 1 << 20)
    rows = heavy_speckle.rows(True, 1, tmp_path)
    assert [r.id for r in rows] == heavy_speckle.expected_ids()
    for row in rows:
        assert row.unavailable is None, row.unavailable
        assert row.subject_stats is not None and row.baseline_stats is not None
