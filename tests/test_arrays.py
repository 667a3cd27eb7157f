"""Issue 21: big numeric results stay numeric.

A numpy array of more than ``CALIBER_ARRAY_INLINE_MAX`` bytes that a task returns (or puts in
g) is stored as ``.npy`` in the queue's content store, referenced from the Results JSON, and
``caliber.get_results()`` gives back an equal array (dtype, shape, values), as a user would
check it: real pinion processes, ``workflow run``, ``results show``. The 10**7-element case
and the memory it costs: the tests marked slow at the end."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import caliber
from caliber.errors import BlobMismatchError
from caliber.queue.registry import open_backend
from caliber.queue.target import local_target
from caliber.results.arrays import REF_KEY, is_ref, results_refs
from tests.pinion_helpers import make_folder, start_pinion

ARRAYS = '''
import os
import numpy as np
from caliber import context

def big(n, seed=0):
    a = np.random.default_rng(seed).random(n)
    context.g.field = a
    return a

def nested(n):
    a = np.random.default_rng(1).random(n).reshape(-1, 4).astype(np.float32)
    context.g.small = np.arange(3)
    return {"result": [np.asfortranarray(a), {"ids": np.arange(n // 4, dtype=np.int32)}],
            "small": np.arange(3), "n": n}

def total(a, flag=None):
    if flag is not None and os.path.exists(flag):
        raise ValueError("not yet")
    return float(a.sum())

def frame(n):
    import pandas as pd
    return pd.DataFrame({"x": np.arange(n), "y": np.linspace(0, 1, n),
                         "name": ["a", "b"] * (n // 2)})
'''
N = 100_000  # 800 KB of float64: above the default 64 KiB


def expected(n: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).random(n)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return make_folder(tmp_path / "wf", module="arrfuncs", source=ARRAYS)


def flow(folder: Path, *tasks: caliber.Task, name: str = "arrays") -> caliber.Workflow:
    return caliber.Workflow(caliber.Process(list(tasks)), name, attachments=["arrfuncs.py"],
                            base_dir=folder)


def big_and_total(folder: Path, n: int = N, flag: Path | None = None) -> caliber.Workflow:
    big = caliber.Task("arrfuncs:big", name="big", args=[n])
    total = caliber.Task("arrfuncs:total", name="total", args=[big.result],
                         kwargs={} if flag is None else {"flag": str(flag)})
    return flow(folder, big, total)


def run_pinion(*args: str, env: dict[str, str] | None = None) -> str:
    pinion = start_pinion("p", "-a", "1", "-w", "0", *args, env=env)
    out, err = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, err
    return out


def cli(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == code, done.stderr
    return done


def blob_files(home: Path) -> dict[str, Path]:
    root = home / "caliber.db-blobs"
    return {p.name: p for p in root.glob("??/*")} if root.exists() else {}


def test_a_pinion_stores_a_big_array_as_npy_and_get_results_gives_it_back(
    folder: Path, caliber_home: Path
) -> None:
    wid = big_and_total(folder).queue(pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    value = results["big"]
    assert isinstance(value, np.ndarray) and value.dtype == np.float64 and value.shape == (N,)
    assert np.array_equal(value, expected(N))
    assert np.array_equal(results.g["field"], expected(N))
    assert results["total"] == pytest.approx(float(expected(N).sum()))  # the next task had it
    stored = results.to_json_dict()
    ref = stored["tasks"][0]["return"]
    assert set(ref) == {REF_KEY, "sha256", "size", "dtype", "shape"}
    assert ref[REF_KEY] == "ndarray" and ref["dtype"] == "<f8" and ref["shape"] == [N]
    assert stored["g"]["field"] == ref  # the same array: one blob
    assert ref["sha256"] in blob_files(caliber_home)
    assert blob_files(caliber_home)[ref["sha256"]].stat().st_size == ref["size"]
    with open_backend(local_target()) as backend:  # the JSON holds no numbers of it
        body = backend.conn.execute("SELECT body FROM results").fetchone()[0]
    assert len(body) < 10_000
    run_folder = Path(str(results.work_dir))
    assert not (run_folder / ".caliber" / "values").exists()  # moved to the store, not copied


def test_nested_arrays_keep_dtype_shape_and_order_and_small_ones_stay_json(
    folder: Path, caliber_home: Path
) -> None:
    wid = flow(folder, caliber.Task("arrfuncs:nested", name="nested", args=[N])).queue(
        pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    value = results["nested"]
    a = np.random.default_rng(1).random(N).reshape(-1, 4).astype(np.float32)
    matrix, inner = value["result"]
    assert matrix.dtype == np.float32 and matrix.shape == (N // 4, 4)
    assert np.array_equal(matrix, a) and matrix.flags.f_contiguous
    assert inner["ids"].dtype == np.int32 and np.array_equal(inner["ids"], np.arange(N // 4))
    assert value["small"] == [0, 1, 2] and value["n"] == N  # 24 bytes: a JSON list, as before
    assert results.g["small"] == [0, 1, 2]
    assert len(results_refs(results.to_json_dict())) == 2


def test_workflow_run_stores_arrays_the_same_way(folder: Path, caliber_home: Path) -> None:
    wf = big_and_total(folder)
    done = cli("workflow", "run", str(wf.export(folder / "arrays.json")), "--json")
    ran = json.loads(done.stdout)
    ref = ran["tasks"][0]["return"]
    assert is_ref(ref) and ref["sha256"] in blob_files(caliber_home)
    results = caliber.get_results(results_id=ran["id"])
    assert np.array_equal(results["big"], expected(N)) and results["big"].dtype == np.float64
    assert not (folder / ".caliber").exists()  # its values went to the store
    in_python = wf.run(work_dir=folder)  # Workflow.run gives the arrays back too
    assert np.array_equal(in_python["big"], expected(N))
    assert in_python.to_json_dict()["tasks"][0]["return"] == ref  # the same bytes, one blob
    kept = wf.run(work_dir=folder, store=False)  # nothing stored: kept in memory
    assert np.array_equal(kept["big"], expected(N))


def test_results_show_summarises_a_big_array_and_json_is_plain(
    folder: Path, caliber_home: Path
) -> None:
    wid = big_and_total(folder).queue(pinion="p")
    run_pinion()
    shown = cli("results", "show", wid).stdout
    a = expected(N)
    words = " ".join(shown.split())  # the table wraps at 100 characters into a pipe
    summary = (f"<array float64 ({N},): min {a.min():.6g}, max {a.max():.6g}, "
               f"mean {a.mean():.6g}>")
    line = next(line for line in shown.splitlines() if line.startswith("big "))
    assert line.split()[:3] == ["big", "-", "completed"] and "<array float64" in line
    assert summary in words
    assert f"field {summary}" in words  # g too
    assert "stored as" not in words  # nothing was converted: it comes back as it was
    assert f"{a[0]!r}"[:8] not in shown and len(shown) < 3000  # no numbers of it
    doc = json.loads(cli("results", "show", wid, "--json").stdout)
    ref = doc["tasks"][0]["return"]
    assert is_ref(ref) and doc["g"]["field"] == ref
    assert caliber.Results.model_validate(doc).to_json_dict() == doc


def test_a_damaged_array_is_an_error_naming_it_never_other_numbers(
    folder: Path, caliber_home: Path
) -> None:
    wid = big_and_total(folder).queue(pinion="p")
    run_pinion()
    ref = caliber.get_results(wid).to_json_dict()["tasks"][0]["return"]
    blob = blob_files(caliber_home)[ref["sha256"]]
    os.chmod(blob, stat.S_IRUSR | stat.S_IWUSR)
    with open(blob, "r+b") as f:  # one number changed on disk
        f.seek(ref["size"] - 8)
        f.write(np.float64(0.5).tobytes())
    with pytest.raises(BlobMismatchError) as caught:
        caliber.get_results(wid)["big"]
    assert str(caught.value).startswith(f"the value of task 'big' is damaged: blob {ref['sha256']}")
    err = cli("results", "show", wid, code=1).stderr
    assert err.startswith("caliber: error: the value of task 'big' is damaged: blob ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    os.truncate(blob, 1000)  # cut short
    with pytest.raises(BlobMismatchError, match="damaged"):
        caliber.get_results(wid).g["field"]


def test_a_prune_keeps_the_arrays_of_results_it_keeps_and_removes_the_others(
    folder: Path, caliber_home: Path
) -> None:
    wid = big_and_total(folder).queue(pinion="p")
    run_pinion()
    ran = flow(folder, caliber.Task("arrfuncs:big", name="big", args=[N, 7])).run(
        work_dir=folder)
    arrays = set(caliber.get_results(wid).value_blobs) | set(ran.value_blobs)
    assert len(arrays) == 2 and arrays <= set(blob_files(caliber_home))
    cli("results", "prune", "--older-than", "1d")  # nothing that old: every array stays
    assert np.array_equal(caliber.get_results(wid)["big"], expected(N))
    assert np.array_equal(caliber.get_results(results_id=ran.id)["big"], expected(N, 7))
    cli("results", "prune", "--older-than", "0s")  # the Results go, and their arrays
    assert not arrays & set(blob_files(caliber_home))


def test_a_resume_reuses_the_stored_array(folder: Path, tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    wid = big_and_total(folder, flag=flag).queue(pinion="p")
    run_pinion()
    first = caliber.get_results(wid)
    assert first.status.value == "failed"
    flag.unlink()  # the fix
    cli("queue", "retry", wid, "--resume")
    run_pinion()
    again = caliber.get_results(wid)
    assert again.ok and again.resumed_from == first.id
    assert again.tasks[0].reused_from == first.id
    assert again["total"] == pytest.approx(float(expected(N).sum()))  # it had the array
    stored = again.to_json_dict()
    assert stored["tasks"][0]["return"] == first.to_json_dict()["tasks"][0]["return"]
    assert np.array_equal(again["big"], expected(N))


def test_workflow_run_resume_reuses_the_stored_array(folder: Path, tmp_path: Path) -> None:
    flag = tmp_path / "fail"
    flag.touch()
    wf = big_and_total(folder, flag=flag)
    first = wf.run(work_dir=folder)
    assert not first.ok
    flag.unlink()
    again = wf.run(work_dir=folder, resume=first.id)
    assert again.ok and again.tasks[0].reused_from == first.id
    assert again["total"] == pytest.approx(float(expected(N).sum()))


def test_the_setting_chooses_what_stays_json(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wf = flow(folder, caliber.Task("arrfuncs:big", name="big", args=[100]))
    monkeypatch.setenv("CALIBER_ARRAY_INLINE_MAX", "0")
    small = wf.run(work_dir=folder)
    monkeypatch.delenv("CALIBER_ARRAY_INLINE_MAX")
    assert is_ref(small.tasks[0].return_)  # 800 bytes, above 0
    assert np.array_equal(small["big"], expected(100))
    listed = wf.run(work_dir=folder)  # 800 bytes: a list, as before
    assert listed["big"] == expected(100).tolist()


def test_odd_arrays_come_back_equal(tmp_path: Path) -> None:
    source = textwrap.dedent('''
        import numpy as np

        def odd():
            n = 20_000
            return {
                "c": np.arange(n, dtype=np.complex128) * 1j,
                "b": np.arange(n * 8) % 3 == 0,
                "t": np.arange(n).astype("datetime64[s]"),
                "s": np.array([str(i) for i in range(n)]),
                "r": np.zeros(n, dtype=[("x", "<f4"), ("n", ">i8")]),
                "big_endian": np.arange(n, dtype=">f8"),
                "strided": np.arange(4 * n, dtype=np.float64)[::2],
                "3d": (np.arange(24 * n) % 251).astype(np.uint8).reshape(2, 3, 4 * n),
                "nan": np.full(n, np.nan),
            }
    ''')
    folder = make_folder(tmp_path / "odd", module="odd", source=source)
    wf = caliber.Workflow(caliber.Process([caliber.Task("odd:odd", name="odd")]), "odd",
                          base_dir=folder)
    results = wf.run(work_dir=folder)
    sys.path.insert(0, str(folder))
    try:
        import odd  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(folder))
    want = odd.odd()
    got = caliber.get_results(results_id=results.id)["odd"]
    assert set(got) == set(want)
    for key, value in want.items():
        assert got[key].dtype == value.dtype and got[key].shape == value.shape, key
        assert np.array_equal(got[key], value, equal_nan=key == "nan"), key
    shown = " ".join(cli("results", "show", results.id).stdout.split())
    assert "<array complex128 (20000,)>" in shown  # no min or max of complex numbers
    assert "<array float64 (20000,): min nan, max nan, mean nan>" in shown


def test_a_dict_of_the_users_with_the_reference_key_stays_theirs() -> None:
    from caliber.results.arrays import ValueWriter
    from caliber.results.convert import to_json

    value = {REF_KEY: "ndarray", "sha256": "0" * 64, "size": 3}
    stored, note = to_json(value, ValueWriter(None, 0))
    assert stored == {f"{REF_KEY} (2)": "ndarray", "sha256": "0" * 64, "size": 3}
    assert note == "dict key '$caliber' stored as '$caliber (2)'"


def test_a_data_frame_comes_back_as_a_data_frame(folder: Path, caliber_home: Path) -> None:
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    wid = flow(folder, caliber.Task("arrfuncs:frame", name="frame", args=[10_000])).queue(
        pinion="p")
    run_pinion()
    results = caliber.get_results(wid)
    ref = results.tasks[0].return_
    assert is_ref(ref) and ref[REF_KEY] == "dataframe" and ref["shape"] == [10_000, 3]
    n = 10_000
    want = pd.DataFrame({"x": np.arange(n), "y": np.linspace(0, 1, n),
                         "name": ["a", "b"] * (n // 2)})
    got = results["frame"]
    assert isinstance(got, pd.DataFrame)
    pd.testing.assert_frame_equal(got, want)
    shown = " ".join(cli("results", "show", wid).stdout.split())
    assert "<DataFrame 10000 rows x 3 columns: x, y, name>" in shown


# --- 10**7 float64, and what it costs -------------------------------------------------------

BIG = 10**7  # 80 MB of float64

PEAK = '''
import os, resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
sys.stdout.write(done.stdout)
sys.stderr.write(done.stderr)
print("PEAK", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)
sys.exit(done.returncode)
'''


def peak_of(*command: str, cwd: Path | None = None) -> int:
    """Peak resident memory (bytes) of the command and every process it waited for."""
    done = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return int(done.stdout.rsplit("PEAK ", 1)[1])


READER = """
import caliber, hashlib, sys
r = caliber.get_results(sys.argv[1])
a = r["big"]
print(a.dtype, a.shape, hashlib.sha256(a.data).hexdigest())
"""


def digest(array: np.ndarray[Any, Any]) -> str:
    import hashlib

    return hashlib.sha256(array.data).hexdigest()


@pytest.mark.slow
def test_ten_million_floats_through_a_pinion_cost_about_their_size_once(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Peak memory of every process of a pinion (its workload's too) and of a reader, over
    the same with a tiny array: about the array's size once (a JSON list of it would be
    about 400 MB more, its text 200 MB more)."""
    monkeypatch.setenv("CALIBER_ARRAY_INLINE_MAX", "0")  # the tiny one the same way
    size = BIG * 8
    pinion = [sys.executable, "-m", "caliber", "pinion", "init", "p", "-a", "1", "-w", "0",
              "-q"]
    peaks = {}
    for n in (10, BIG):
        wid = flow(folder, caliber.Task("arrfuncs:big", name="big", args=[n])).queue(
            pinion="p")
        peaks["pinion", n] = peak_of(*pinion)
        peaks["reader", n] = peak_of(sys.executable, "-c", READER, wid, cwd=tmp_path)
    assert peaks["pinion", BIG] - peaks["pinion", 10] < size * 1.4, peaks
    assert peaks["reader", BIG] - peaks["reader", 10] < size * 1.4, peaks
    read = subprocess.run([sys.executable, "-c", READER, wid], capture_output=True, text=True,
                          check=True).stdout.split()
    assert read == ["float64", f"({BIG},)", digest(expected(BIG))]
    results = caliber.get_results(wid)
    assert np.array_equal(results["big"], expected(BIG)) and results["big"].dtype == np.float64
    assert np.array_equal(results.g["field"], expected(BIG))
    shown = cli("results", "show", wid).stdout
    assert f"<array float64 ({BIG},): min " in " ".join(shown.split()) and len(shown) < 3000


@pytest.mark.slow
def test_ten_million_floats_by_workflow_run(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CALIBER_ARRAY_INLINE_MAX", "0")  # the tiny one the same way
    peaks = {}
    for n in (10, BIG):
        path = flow(folder, caliber.Task("arrfuncs:big", name="big", args=[n])).export(
            folder / "big.json")
        peaks[n] = peak_of(sys.executable, "-m", "caliber", "workflow", "run", str(path))
    assert peaks[BIG] - peaks[10] < BIG * 8 * 1.4, peaks
    results = caliber.get_results(workflow="arrays")
    assert digest(results["big"]) == digest(expected(BIG))
    assert digest(results.g["field"]) == digest(expected(BIG))


def test_the_benchmark_measures_caliber_and_numpy(tmp_path: Path) -> None:
    """bench/heavy_arrays.py still works (its figures here mean nothing: 10**6 floats, once)."""
    from bench import heavy_arrays

    rows = heavy_arrays.rows(quick=True, reps=1, root=tmp_path)
    assert [row.id for row in rows] == heavy_arrays.expected_ids()
    for row in rows:
        assert row.unavailable is None and row.subject_stats and row.baseline_stats, row.id


@pytest.mark.parametrize("kind", [[], {}, ["npy"], 3, None, "npz"])
def test_a_forged_reference_of_any_json_is_no_reference(kind: object) -> None:
    """A queue writer can put any JSON in stored Results: ``{"$caliber": []}`` used to raise
    TypeError (a list is not hashable) where a clear refusal was due."""
    forged = {REF_KEY: kind, "sha256": "0" * 64, "size": 8}
    assert not is_ref(forged)
    assert results_refs({"tasks": [{"return": [forged]}], "g": {"x": forged}}) == {}
