"""Issue 21, a big array's way into the local store and back, hashed once: the workload's
process hashes the ``.npy`` as it writes it, the store takes that file in by rename (sealed,
0600, flushed), and a sealed blob is read back without hashing it again (size and header
checked); a blob written since it was stored is hashed, and refused when it does not match.
Crashes while writing leave no file under a value's or a blob's name."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import caliber
from caliber.errors import BlobMismatchError
from caliber.queue.blobs import SEAL_NS, FolderBlobStore
from caliber.queue.registry import open_backend
from caliber.queue.sqlite.backend import SQLiteBackend
from caliber.queue.target import local_target
from caliber.results.arrays import VALUES_DIR, ValueWriter, put_values
from tests.pinion_helpers import make_folder, start_pinion

SOURCE = '''
import numpy as np
from caliber import context

def big(n):
    a = np.random.default_rng(0).random(n)
    context.g.field = a
    return a

def again(a):
    return float(a[0])
'''
N = 200_000  # 1.6 MB of float64


def expected(n: int = N) -> np.ndarray[Any, Any]:
    return np.random.default_rng(0).random(n)


@pytest.fixture
def backend(caliber_home: Path) -> Iterator[SQLiteBackend]:
    opened = open_backend(local_target())
    assert isinstance(opened, SQLiteBackend)
    with closing(opened):
        yield opened


def blob_path(home: Path, sha: str) -> Path:
    return home / "caliber.db-blobs" / sha[:2] / sha


def stored_by_a_pinion(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    folder = make_folder(tmp_path / "wf", module="bigfuncs", source=SOURCE)
    big = caliber.Task("bigfuncs:big", name="big", args=[N])
    again = caliber.Task("bigfuncs:again", name="again", args=[big.result])
    wid = caliber.Workflow(caliber.Process([big, again]), "big", attachments=["bigfuncs.py"],
                           base_dir=folder).queue(pinion="p")
    pinion = start_pinion("p", "-a", "1", "-w", "0", "-q")
    _out, err = pinion.communicate(timeout=120)
    assert pinion.returncode == 0, err
    return wid, caliber.get_results(wid).to_json_dict()["tasks"][0]["return"]


def write_value(folder: Path, array: np.ndarray[Any, Any]) -> tuple[ValueWriter, dict[str, Any]]:
    writer = ValueWriter(folder / VALUES_DIR, 0)
    ref = writer.store(array)
    assert ref is not None
    return writer, ref


def test_the_blob_is_the_file_the_run_wrote_named_by_its_sha256(
    tmp_path: Path, caliber_home: Path
) -> None:
    """Through a real pinion: the blob's name is the SHA-256 of its bytes, it is a plain
    .npy, 0600 and sealed, and nothing temporary is left in the run folder or the store."""
    wid, ref = stored_by_a_pinion(tmp_path)
    blob = blob_path(caliber_home, ref["sha256"])
    data = blob.read_bytes()
    assert hashlib.sha256(data).hexdigest() == ref["sha256"] and len(data) == ref["size"]
    assert np.array_equal(np.load(blob), expected())
    st = blob.stat()
    assert st.st_mtime_ns == SEAL_NS and st.st_nlink == 1
    if os.name == "posix":
        assert stat.S_IMODE(st.st_mode) == 0o600
    results = caliber.get_results(wid)
    assert results["again"] == expected()[0]  # the next task read it from the run folder
    assert not (Path(str(results.work_dir)) / ".caliber").exists()
    assert list((caliber_home / "caliber.db-blobs" / "tmp").glob("*")) == []
    assert np.array_equal(results["big"], expected())


def test_a_sealed_local_blob_is_read_without_hashing_it_again(
    tmp_path: Path, caliber_home: Path
) -> None:
    """The limit of the fast read, on purpose: bytes changed under a seal put back by hand
    are not caught (a read with the hash, as before, refuses them). A change through the
    file system alone breaks the seal, and is caught: test_arrays.py's damaged array."""
    wid, ref = stored_by_a_pinion(tmp_path)
    blob = blob_path(caliber_home, ref["sha256"])
    with open(blob, "r+b") as f:
        f.seek(ref["size"] - 8)
        f.write(np.float64(0.5).tobytes())
    os.utime(blob, ns=(SEAL_NS, SEAL_NS))
    assert caliber.get_results(wid)["big"][-1] == 0.5


def test_a_blob_copied_without_its_times_is_checked_by_its_hash(
    tmp_path: Path, caliber_home: Path
) -> None:
    """A blob that lost its seal (copied by hand, restored from a copy) is read as before:
    its bytes hashed, right ones given back, wrong ones refused."""
    wid, ref = stored_by_a_pinion(tmp_path)
    blob = blob_path(caliber_home, ref["sha256"])
    copy = tmp_path / "copy"
    shutil.copyfile(blob, copy)
    os.replace(copy, blob)
    assert blob.stat().st_mtime_ns != SEAL_NS
    assert np.array_equal(caliber.get_results(wid)["big"], expected())
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(BlobMismatchError, match="does not match its SHA-256"):
        caliber.get_results(wid)["big"]


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_sealed_blob_is_a_clear_error_never_other_numbers(
    tmp_path: Path, caliber_home: Path, damage: str
) -> None:
    """Even with its seal put back: a blob cut short, or whose header says another array, is
    refused naming the value (the size and header are always checked)."""
    wid, ref = stored_by_a_pinion(tmp_path)
    blob = blob_path(caliber_home, ref["sha256"])
    if damage == "truncated":
        os.truncate(blob, ref["size"] - 8)
    else:
        data = blob.read_bytes()
        blob.write_bytes(data.replace(b"'<f8'", b"'<i8'", 1))
    os.utime(blob, ns=(SEAL_NS, SEAL_NS))
    with pytest.raises(BlobMismatchError, match=r"^the value of task 'big' is damaged: blob "):
        caliber.get_results(wid)["big"]
    done = subprocess.run([sys.executable, "-m", "caliber", "results", "show", wid],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("caliber: error: the value of task 'big' is damaged: ")


def test_the_writer_names_the_file_by_the_sha256_of_its_bytes(tmp_path: Path) -> None:
    """Written once, named by the hash of what was written; the same array again (g after
    each task) or an equal one is one file; nothing temporary left."""
    array = expected()
    writer, ref = write_value(tmp_path, array)
    folder = tmp_path / VALUES_DIR
    path = folder / f"{ref['sha256']}.npy"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == ref["sha256"]
    assert ref["size"] == path.stat().st_size
    assert writer.store(array) == ref and writer.store(array.copy()) == ref
    array[0] = 2.0  # the same object, changed: a new file
    changed = writer.store(array)
    assert changed is not None and changed["sha256"] != ref["sha256"]
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(f"{r['sha256']}.npy" for r in (ref, changed))
    assert np.load(folder / f"{changed['sha256']}.npy")[0] == 2.0


def test_the_store_takes_the_file_in_without_a_copy(
    tmp_path: Path, backend: SQLiteBackend
) -> None:
    writer, ref = write_value(tmp_path, expected())
    path = tmp_path / VALUES_DIR / f"{ref['sha256']}.npy"
    inode = path.stat().st_ino
    assert put_values(backend, tmp_path / VALUES_DIR, writer.written) is None
    blob = backend.blobs.path(ref["sha256"])
    assert blob.stat().st_ino == inode  # moved, not copied
    assert not path.exists() and not (tmp_path / ".caliber").exists()
    with backend.transaction() as conn:  # pending until Results refer to it (prune keeps it)
        kinds = conn.execute("SELECT kind FROM blob_refs WHERE sha256 = ?",
                             (ref["sha256"],)).fetchall()
    assert kinds == [("pending",)]


@pytest.mark.parametrize("change", ["longer", "header", "linked"])
def test_a_file_changed_after_the_run_wrote_it_is_not_stored(
    tmp_path: Path, backend: SQLiteBackend, change: str
) -> None:
    writer, ref = write_value(tmp_path, expected())
    path = tmp_path / VALUES_DIR / f"{ref['sha256']}.npy"
    if change == "longer":
        with open(path, "ab") as f:
            f.write(b"\0" * 8)
    elif change == "header":
        data = path.read_bytes()
        path.write_bytes(data.replace(b"(200000,)", b"(100000,)", 1))
    else:
        os.link(path, tmp_path / "elsewhere.npy")
    problem = put_values(backend, tmp_path / VALUES_DIR, writer.written)
    assert problem is not None and problem.startswith(f"{path} changed after the run wrote it")
    assert not backend.has_blob(ref["sha256"])
    assert not path.exists()


def test_a_store_on_another_file_system_copies_the_file_through_its_hash(
    backend: SQLiteBackend,
) -> None:
    """Where the values folder and the store are on different file systems (a rename cannot
    move the file), the file is copied through SHA-256 as any other."""
    store_device = backend.blobs.root.parent.stat().st_dev
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == store_device:
        pytest.skip("no second file system here")
    other = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        writer, ref = write_value(other, expected())
        assert put_values(backend, other / VALUES_DIR, writer.written) is None
        blob = backend.blobs.path(ref["sha256"])
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == ref["sha256"]
        assert blob.stat().st_mtime_ns == SEAL_NS
        assert not (other / VALUES_DIR).exists()
    finally:
        shutil.rmtree(other)


WRITER = textwrap.dedent('''
    import resource, signal, sys
    from pathlib import Path
    import numpy as np
    from caliber.results.arrays import VALUES_DIR, ValueWriter

    # ignored (Python's own choice): the write fails with EFBIG; else the kernel kills it
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN if sys.argv[2] == "error" else signal.SIG_DFL)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    try:
        ValueWriter(Path(sys.argv[1]) / VALUES_DIR, 0).store(np.ones(1 << 20))
    except OSError as exc:
        print(exc.errno)
''')


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="POSIX file size limits")
@pytest.mark.parametrize("how", ["error", "killed"])
def test_an_interrupted_write_leaves_no_value_under_its_name(tmp_path: Path, how: str) -> None:
    """A real process whose write of an 8 MB array stops at 1 MB: by an error (the disk
    full, say), it removes its temporary file; killed by the kernel in the middle, it leaves
    only that (the store sweeps such files, and the pinion fails a run that names no file)."""
    done = subprocess.run([sys.executable, "-c", WRITER, str(tmp_path), how],
                          capture_output=True, text=True, timeout=120)
    folder = tmp_path / VALUES_DIR
    left = sorted(p.name for p in folder.iterdir())
    assert not [name for name in left if name.endswith(".npy")]
    if how == "error":
        assert done.returncode == 0 and done.stdout.split() == ["27"], done.stderr  # EFBIG
        assert left == []
    else:
        assert done.returncode == -signal.SIGXFSZ
        assert len(left) == 1 and left[0].endswith(".part")
        assert (folder / left[0]).stat().st_size <= 1 << 20


def test_a_store_killed_before_naming_leaves_no_blob(tmp_path: Path, caliber_home: Path) -> None:
    """The store's side of a crash: a process that dies as it flushes the file (killed in
    its fsync) has named nothing; the file is still where the run wrote it."""
    code = textwrap.dedent('''
        import os, signal, sys
        from contextlib import closing
        from pathlib import Path
        import numpy as np
        from caliber.queue.registry import open_backend
        from caliber.queue.target import local_target
        from caliber.results.arrays import VALUES_DIR, ValueWriter, put_values

        folder = Path(sys.argv[1]) / VALUES_DIR
        writer = ValueWriter(folder, 0)
        ref = writer.store(np.arange(100_000.0))
        print(ref["sha256"], flush=True)
        with closing(open_backend(local_target())) as backend:
            def crash(fd):  # the crash, as the file is flushed before it is named
                os.kill(os.getpid(), signal.SIGKILL)
            os.fsync = os.fdatasync = crash
            put_values(backend, folder, writer.written)
    ''')
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    sha = done.stdout.strip()
    assert not blob_path(caliber_home, sha).exists()
    assert (tmp_path / VALUES_DIR / f"{sha}.npy").is_file()
    assert FolderBlobStore(caliber_home / "caliber.db-blobs").has_blob(sha) is False
