"""The contract of the content-addressed store (:class:`caliber.queue.blobs.BlobStore`), run
against every backend that is one (see conftest): stored once by content, streamed back, and
bytes that do not match their name never handed out."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from caliber.errors import BlobMismatchError, NotFoundError
from caliber.queue.blobs import BlobRef, BlobStore, FolderBlobStore, hash_file, is_sha256

if TYPE_CHECKING:
    from caliber.queue.backend import QueueBackend


@pytest.fixture
def store(backend: QueueBackend) -> BlobStore:
    if not isinstance(backend, BlobStore):
        pytest.skip(f"{type(backend).__name__} is not a blob store yet")
    return backend


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_hash_file_is_sha256_and_size(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)  # more than one chunk, not a whole number of them
    ref = hash_file(write(tmp_path / "f", data))
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert is_sha256(ref.sha256)
    assert hash_file(write(tmp_path / "empty", b"")) == BlobRef(hashlib.sha256().hexdigest(), 0)


def test_put_then_read_back(store: BlobStore, tmp_path: Path) -> None:
    data = os.urandom(2 * (1 << 20) + 5)
    ref = store.put_blob(write(tmp_path / "mesh.bdf", data))
    assert ref == BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    assert store.has_blob(ref.sha256)
    with store.open_blob(ref.sha256) as f:
        assert f.read() == data
    store.fetch_blob(ref.sha256, tmp_path / "out.bdf")
    assert (tmp_path / "out.bdf").read_bytes() == data
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "out.bdf").stat().st_mode) == 0o600


def test_fetch_keeps_the_mode_asked(store: BlobStore, tmp_path: Path) -> None:
    ref = store.put_blob(write(tmp_path / "run.sh", b"#!/bin/sh\necho hi\n"))
    store.fetch_blob(ref.sha256, tmp_path / "copy.sh", mode=0o700)
    if os.name == "posix":
        assert stat.S_IMODE((tmp_path / "copy.sh").stat().st_mode) == 0o700


def test_fetch_never_overwrites(store: BlobStore, tmp_path: Path) -> None:
    ref = store.put_blob(write(tmp_path / "a", b"new"))
    write(tmp_path / "there", b"old")
    with pytest.raises(FileExistsError):
        store.fetch_blob(ref.sha256, tmp_path / "there")
    assert (tmp_path / "there").read_bytes() == b"old"


def test_empty_blob(store: BlobStore, tmp_path: Path) -> None:
    ref = store.put_blob(write(tmp_path / "empty", b""))
    assert ref.size == 0 and store.has_blob(ref.sha256)
    store.fetch_blob(ref.sha256, tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b""


def test_absent_blob(store: BlobStore, tmp_path: Path) -> None:
    missing = hashlib.sha256(b"never stored").hexdigest()
    assert not store.has_blob(missing)
    assert not store.has_blob("not a hash")
    with pytest.raises(NotFoundError):
        store.open_blob(missing)
    with pytest.raises(NotFoundError):
        store.fetch_blob(missing, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_stored_once_by_content(backend: QueueBackend, tmp_path: Path) -> None:
    """The same bytes put 17 times (from files of other names) are one blob."""
    if not isinstance(backend, BlobStore):
        pytest.skip("not a blob store yet")
    data = os.urandom(100_000)
    refs = {backend.put_blob(write(tmp_path / f"copy{i}", data)) for i in range(17)}
    assert len(refs) == 1
    blobs = getattr(backend, "blobs", None)
    if isinstance(blobs, FolderBlobStore):  # the local store: one file, no temporaries left
        assert list(blobs.names()) == [refs.pop().sha256]
        assert list((blobs.root / "tmp").iterdir()) == []


def test_a_changed_blob_is_refused(backend: QueueBackend, tmp_path: Path) -> None:
    """Bytes that do not hash to the blob's name are never written out under the name asked
    (the local store: a blob file changed on disk)."""
    blobs = local_store(backend)
    ref = backend.put_blob(write(tmp_path / "input.dat", b"the real input"))  # type: ignore[attr-defined]
    path = blobs.path(ref.sha256)
    os.chmod(path, 0o600)
    path.write_bytes(b"the evil input")
    with pytest.raises(BlobMismatchError, match="does not match its name"):
        backend.fetch_blob(ref.sha256, tmp_path / "out")  # type: ignore[attr-defined]
    assert not (tmp_path / "out").exists()
    assert [p for p in tmp_path.iterdir() if p.name.endswith(".part")] == []


def local_store(backend: QueueBackend) -> FolderBlobStore:
    blobs = getattr(backend, "blobs", None)
    if not isinstance(blobs, FolderBlobStore):
        pytest.skip("the blobs of this backend are not files here")
    return blobs


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_the_local_store_is_private(backend: QueueBackend, tmp_path: Path) -> None:
    """Folders 0700, blobs 0600, whatever the umask."""
    blobs = local_store(backend)
    old = os.umask(0)
    try:
        ref = blobs.put_blob(write(tmp_path / "f", b"data"))
    finally:
        os.umask(old)
    path = blobs.path(ref.sha256)
    assert path.parent.parent == blobs.root
    for folder in (blobs.root, path.parent, blobs.root / "tmp"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_crashed_writer_leaves_no_blob(backend: QueueBackend, tmp_path: Path) -> None:
    """A temporary file left by a writer that died is not a blob, and is swept once stale."""
    blobs = local_store(backend)
    blobs.put_blob(write(tmp_path / "f", b"data"))
    left = blobs.root / "tmp" / "12345-deadbeef"
    left.write_bytes(b"half a blo")
    assert len(list(blobs.names())) == 1
    blobs.sweep_tmp()
    assert left.exists()  # it may be a writer at work
    os.utime(left, (1, 1))
    blobs.sweep_tmp()
    assert not left.exists()


def test_a_damaged_blob_is_replaced_by_a_new_put(backend: QueueBackend, tmp_path: Path) -> None:
    """Putting the bytes again repairs a blob cut short on disk."""
    blobs = local_store(backend)
    source = write(tmp_path / "f", b"0123456789")
    ref = blobs.put_blob(source)
    os.chmod(blobs.path(ref.sha256), 0o600)
    blobs.path(ref.sha256).write_bytes(b"01234")
    assert blobs.put_blob(source) == ref
    assert blobs.path(ref.sha256).read_bytes() == b"0123456789"


def test_a_workload_refers_to_its_blobs_and_a_pinion_writes_them_out(
        backend: QueueBackend, tmp_path: Path) -> None:
    """A workload whose attachments are stored blobs: read back with their path, hash, size
    and mode, and written into a run folder as they were (whatever the backend keeps)."""
    if not isinstance(backend, BlobStore):
        pytest.skip("not a blob store yet")
    from caliber.pinion.attachments import write_attachments
    from caliber.queue.workload import Attachment
    from tests.contract.test_backend_contract import make_workload

    files = {"solve.sh": (b"#!/bin/sh\n", 0o755), "mesh/part.bin": (os.urandom(70_000), 0o644)}
    attachments = []
    for name, (data, mode) in files.items():
        ref = backend.put_blob(write(tmp_path / name.replace("/", "_"), data))
        attachments.append(Attachment(path=name, sha256=ref.sha256, size=ref.size, mode=mode))
    w = make_workload().model_copy(update={"attachments": attachments})
    backend.put(w)
    got = backend.get(w.id)
    assert [(a.path, a.sha256, a.size, a.mode) for a in got.attachments] == [
        (a.path, a.sha256, a.size, a.mode) for a in attachments]
    run = tmp_path / "run"
    run.mkdir()
    write_attachments(got.attachments, run, backend)
    for name, (data, mode) in files.items():
        assert (run / name).read_bytes() == data
        if os.name == "posix":
            assert stat.S_IMODE((run / name).stat().st_mode) == (0o700 if mode & 0o100 else 0o600)


def test_a_file_store_takes_a_finished_file_in_by_its_name(
        store: BlobStore, tmp_path: Path) -> None:
    """A store of files here (FileBlobStore) takes a file whose hash its writer computed,
    moving it in: readable under that name, sealed and (POSIX) 0600; its bytes read
    back as they are. A file of another size than named is refused and nothing is named."""
    from caliber.queue.blobs import SEAL_NS, FileBlobStore, is_sealed

    if not isinstance(store, FileBlobStore):
        pytest.skip("not a store of files here")
    data = os.urandom(3 * (1 << 20) + 1)
    ref = BlobRef(hashlib.sha256(data).hexdigest(), len(data))
    source = write(tmp_path / "v.npy", data)
    os.chmod(source, 0o644)
    assert store.take_blob(source, ref) == ref
    assert not source.exists() and store.has_blob(ref.sha256)
    with store.open_blob(ref.sha256) as f:
        assert is_sealed(f, ref.size) and f.read() == data
        st = os.fstat(f.fileno())
    assert st.st_mtime_ns == SEAL_NS
    if os.name == "posix":
        assert stat.S_IMODE(st.st_mode) == 0o600
    short = write(tmp_path / "w.npy", b"not all of it")
    wrong = BlobRef(hashlib.sha256(b"something else").hexdigest(), 99)
    with pytest.raises(BlobMismatchError):
        store.take_blob(short, wrong)
    assert not store.has_blob(wrong.sha256) and short.exists()
