"""Issue 21: a big array a task returns on the remote queue comes back as the array (its
``.npy`` a blob of the Speckle queue's content store, the reference in the remote Results)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("specklepy")
pytest.importorskip("caliber.queue.speckle.results",
                    reason="the remote content store (branch speckle-store) is not here yet")

import caliber
from caliber.results.arrays import is_ref
from tests.pinion_helpers import make_folder
from tests.remote_helpers import Remote, remote
from tests.speckle_fixtures import speckle_server, speckle_token, speckle_userdata
from tests.test_arrays import ARRAYS, N, big_and_total, expected

pytestmark = pytest.mark.speckle
__all__ = ["remote", "speckle_server", "speckle_token", "speckle_userdata"]  # fixtures


def test_a_big_array_goes_through_a_remote_queue_and_comes_back(
    remote: Remote, tmp_path: Path
) -> None:
    folder = make_folder(tmp_path / "wf", module="arrfuncs", source=ARRAYS)
    wid = big_and_total(folder).queue(pinion="p", project=remote.project)
    done = subprocess.run(
        [sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w", "0.1",
         "--project", remote.project], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    results = caliber.get_results(wid, project=remote.project)
    assert results.ok, results.error
    assert is_ref(results.tasks[0].return_)  # a reference in the remote Results, not a list
    value = results["big"]
    assert isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (N,)
    assert np.array_equal(value, expected(N))
    assert np.array_equal(results.g["field"], expected(N))
    assert results["total"] == pytest.approx(float(expected(N).sum()))
