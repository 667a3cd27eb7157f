"""Big numbers stay numbers: numpy arrays and pandas frames kept as binary beside the Results.

A value (a task's return, or one in ``g``) that is or holds a numpy array of more than
``CALIBER_ARRAY_INLINE_MAX`` bytes (64 KiB by default) is not turned into a JSON list: the
array is written as a ``.npy`` file (``numpy.save``'s format) and the Results JSON holds a
reference in its place::

    {"$caliber": "ndarray", "sha256": "9f2c...", "size": 80000128,
     "dtype": "<f8", "shape": [10000000]}

``sha256`` and ``size`` are those of the ``.npy`` file (header and data): the blob's name in
the queue's content store (:mod:`caliber.queue.blobs`); ``dtype`` is numpy's description of
the dtype (``numpy.lib.format.dtype_to_descr``: text, a list for a structured dtype) and
``shape`` the array's shape. A pandas ``DataFrame`` of more than that many bytes is kept the
same way as a Parquet file where pyarrow is installed (else as records, as before)::

    {"$caliber": "dataframe", "sha256": "...", "size": 5210, "format": "parquet",
     "shape": [1000, 3]}

The way of a value: the workload's process converts it (:mod:`caliber.results.convert`) with
a :class:`ValueWriter`, which writes each big array into the run folder's private
``.caliber/values/`` as ``<sha256>.npy`` (the same array twice is one file), hashing the
bytes as it writes them; the pinion moves each file into the queue's store before it
completes the workload (:func:`put_values`: a local store takes the file as it is, its size
and header checked; a remote one hashes it as it uploads it); ``caliber.get_results()`` reads
them back (:class:`BlobValues`), checking size and header, and the SHA-256 unless the blob is
sealed in the local store (:func:`_sealed` says why that is enough); a damaged blob is an
error naming the value, never wrong numbers. The Results signature covers the references, so
the bytes a resume reuses are exactly the signed ones.

No pydantic, no threading and no numpy here: a pinion's child imports this module, and numpy
(or pandas) is used only when a value is one of theirs (and so is loaded already).
"""

from __future__ import annotations

import _thread
import hashlib
import io
import math
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from caliber.errors import BlobMismatchError, NotFoundError, QueueError
from caliber.platform import create_new_file, make_private_folder

if TYPE_CHECKING:  # not at run time: a child has no store (and blobs loads random)
    from caliber.queue.blobs import BlobStore

REF_KEY = "$caliber"
"""The key that marks a reference; a value's own dict with this key is stored with it renamed
(see :mod:`caliber.results.convert`)."""
NDARRAY = "ndarray"
DATAFRAME = "dataframe"
KINDS = {NDARRAY: ".npy", DATAFRAME: ".parquet"}
"""Each kind of reference and the suffix of its file in a run folder."""
VALUES_DIR = Path(".caliber") / "values"
"""Where a run writes its big values, inside its working folder."""
WRITE_CHUNK = 8 << 20  # bytes per write and read: a slice of the array itself, never a copy
READ_SLICE = 1 << 20  # bytes per slice of an array read slice by slice (ArrayReader)
_NPY_MAGIC = b"\x93NUMPY"


def is_sha256(text: object) -> bool:
    """64 lowercase hex digits (no ``re``: the child keeps its modules few)."""
    return (isinstance(text, str) and len(text) == 64
            and all(c in "0123456789abcdef" for c in text))


def is_ref(value: object) -> bool:
    """Whether ``value`` (JSON) is a reference to a stored array or frame."""
    if type(value) is not dict:
        return False
    kind = value.get(REF_KEY)  # any JSON in a forged entry: a list is not a kind, nor hashable
    return (type(kind) is str and kind in KINDS
            and is_sha256(value.get("sha256")) and type(value.get("size")) is int)


def file_name(ref: dict[str, Any]) -> str:
    """The file of a reference in a run's values folder: ``<sha256>.npy``."""
    return str(ref["sha256"]) + KINDS[str(ref[REF_KEY])]


def value_refs(value: Any) -> Iterator[dict[str, Any]]:
    """Every reference in a JSON value, depth first."""
    if type(value) is dict:
        if is_ref(value):
            yield value
            return
        for item in value.values():
            yield from value_refs(item)
    elif type(value) is list:
        for item in value:
            yield from value_refs(item)


def results_refs(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every reference in Results (their JSON form), by SHA-256: the tasks' return values and
    ``g_set``, and ``g``. What a prune must keep, and what the pinion stores."""
    found: dict[str, dict[str, Any]] = {}
    for task in results.get("tasks") or []:
        for ref in value_refs([task.get("return"), task.get("g_set")]):
            found.setdefault(ref["sha256"], ref)
    for ref in value_refs(results.get("g")):
        found.setdefault(ref["sha256"], ref)
    return found


def restore(value: Any, load: Callable[[dict[str, Any]], Any]) -> Any:
    """``value`` (JSON) with every reference replaced by ``load(reference)``; the value itself
    when it holds none (nothing is copied then)."""
    if type(value) is dict:
        if is_ref(value):
            return load(value)
        out: dict[str, Any] | None = None
        for key, item in value.items():
            new = restore(item, load)
            if new is not item and out is None:
                out = dict(value)
            if out is not None:
                out[key] = new
        return value if out is None else out
    if type(value) is list:
        items: list[Any] | None = None
        for i, item in enumerate(value):
            new = restore(item, load)
            if new is not item and items is None:
                items = list(value)
            if items is not None:
                items[i] = new
        return value if items is None else items
    return value


# --- writing: in the workload's process -------------------------------------------------

class ValueWriter:
    """Keeps the big arrays and frames of the values being converted out of their JSON.

    With a ``folder``, each is written there as ``<sha256>.npy`` (or ``.parquet``), once per
    content, and :attr:`written` lists them; without, they are kept in memory
    (:attr:`kept`, ``Workflow.run(store=False)``). Arrays and frames of more than
    ``inline_max`` bytes are kept (``CALIBER_ARRAY_INLINE_MAX``). Memory: an array is hashed
    and written from its own buffer, slice by slice, never copied (but for one that is not
    contiguous).

    Speed: an array's bytes are hashed once, while they are written (:meth:`_write_hashing`),
    and the pinion moves the file into the store as it is, without reading it again
    (:meth:`caliber.queue.blobs.FolderBlobStore.take_blob`). An array converted again (one
    kept in ``g`` is converted after every task, to see whether the task changed it) is
    hashed first and written only when its bytes are new."""

    def __init__(self, folder: Path | None, inline_max: int) -> None:
        self.folder = folder
        self.inline_max = inline_max
        self.written: dict[str, dict[str, Any]] = {}
        self.kept: dict[str, Any] = {}
        self._seen: set[int] = set()  # ids of the arrays converted so far (a hint, see _array)
        self._count = 0

    def store(self, value: Any) -> dict[str, Any] | None:
        """The reference that takes ``value``'s place in the JSON, or None: not an array
        or frame big enough (or one that has no binary form here), converted as before.
        OSError when its file cannot be written."""
        kind = type(value)
        module = kind.__module__.partition(".")[0]
        if module == "numpy" and kind.__name__ in ("ndarray", "memmap"):
            return self._array(value)
        if module == "pandas" and kind.__name__ == "DataFrame":
            return self._frame(value)
        return None

    def _array(self, value: Any) -> dict[str, Any] | None:
        import numpy
        from numpy.lib import format as npy

        if value.dtype.hasobject or value.nbytes <= self.inline_max:
            return None
        array = numpy.asarray(value)  # a memmap as the plain array it is (no copy)
        header, data = npy_parts(array)
        ref: dict[str, Any] = {
            REF_KEY: NDARRAY, "sha256": "", "size": len(header) + data.nbytes,
            "dtype": _json(npy.dtype_to_descr(array.dtype)),
            "shape": list(array.shape)}
        seen = id(value) in self._seen
        self._seen.add(id(value))
        if self.folder is not None and not seen:  # most likely bytes not written yet
            ref["sha256"] = self._write_hashing((header, data), KINDS[NDARRAY])
        else:  # kept in memory, or an array seen before (g, after every task): hash first
            ref["sha256"] = _sha256((header, data))
            if self.folder is None:
                self.kept[ref["sha256"]] = value
            elif ref["sha256"] not in self.written:
                self._write(file_name(ref), lambda fd: _write_all(fd, (header, data)))
        self.written[ref["sha256"]] = ref
        return ref

    def _frame(self, frame: Any) -> dict[str, Any] | None:
        try:
            if int(frame.memory_usage(index=True, deep=True).sum()) <= self.inline_max:
                return None
            buffer = io.BytesIO()
            frame.to_parquet(buffer, engine="pyarrow")
        except Exception:  # no pyarrow, or a frame Parquet cannot hold: records, as before
            return None
        data = buffer.getbuffer()
        ref: dict[str, Any] = {REF_KEY: DATAFRAME, "sha256": hashlib.sha256(data).hexdigest(),
               "size": data.nbytes, "format": "parquet", "shape": list(frame.shape)}
        sha = ref["sha256"]
        if self.folder is None:
            self.kept[sha] = frame
        elif sha not in self.written:
            self._write(file_name(ref), lambda fd: _write_all(fd, (data,)))
        self.written[sha] = ref
        return ref

    def _write_hashing(self, parts: tuple[Any, ...], suffix: str) -> str:
        """Write ``parts`` as a new file in the folder while a second thread hashes them
        (:func:`_hash_beside`), flushed to disk (fsync) as part of the writing; the file gets
        its name, ``<sha256><suffix>``, once both are done (a file of that name is there
        already: the same bytes, the new one is dropped). Returns the SHA-256. The flush is
        the one the store needs before it names a blob (it takes this file as it is): made
        here, it overlaps with the hash instead of following it."""
        assert self.folder is not None
        make_private_folder(self.folder)
        self._count += 1
        tmp = self.folder / f".{os.getpid()}-{id(self):x}-{self._count}.part"
        fd = create_new_file(tmp)
        try:
            try:
                sha = _hash_beside(parts, lambda: _write_all(fd, parts, sync=True))
            finally:
                os.close(fd)
            path = self.folder / (sha + suffix)
            if not os.path.exists(path):
                os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
        return sha

    def _write(self, name: str, write: Callable[[int], None]) -> None:
        """Write a file whole under ``name`` in the folder (to a temporary name first: a
        half-written file never has a value's name)."""
        assert self.folder is not None
        path = self.folder / name
        if os.path.exists(path):
            return
        make_private_folder(self.folder)
        tmp = self.folder / f".{name}.{os.getpid()}.part"
        fd = create_new_file(tmp)
        try:
            try:
                write(fd)
            finally:
                os.close(fd)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)


def npy_parts(array: Any) -> tuple[bytes, Any]:
    """The ``.npy`` header of ``array`` and its data as one flat C-contiguous ``uint8`` array
    over the array's own memory (a copy only when the array is not contiguous): what
    ``numpy.save`` writes, Fortran order kept."""
    import numpy
    from numpy.lib import format as npy

    fields = npy.header_data_from_array_1_0(array)
    header = io.BytesIO()
    try:
        npy.write_array_header_1_0(header, fields)
    except ValueError:  # a header longer than 64 KiB (a dtype with very many fields)
        header = io.BytesIO()
        npy.write_array_header_2_0(header, fields)
    # Fortran order: its transpose is C-contiguous, the same memory; else the array itself
    # when it is contiguous (a copy when not)
    flat = array.T if fields["fortran_order"] else numpy.ascontiguousarray(array)
    return header.getvalue(), flat.reshape(-1).view(numpy.uint8)


def _write_all(fd: int, parts: tuple[Any, ...], *, sync: bool = False) -> None:
    for part in parts:
        view = memoryview(part)
        for start in range(0, view.nbytes, WRITE_CHUNK):
            piece = view[start:start + WRITE_CHUNK]
            while piece:
                piece = piece[os.write(fd, piece):]
    if sync:
        os.fsync(fd)


def _sha256(parts: tuple[Any, ...]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def _hash_beside(parts: tuple[Any, ...], work: Callable[[], None]) -> str:
    """The SHA-256 of ``parts``, computed on a second thread while ``work()`` (writing them)
    runs on this one: hashlib lets go of the GIL over a big buffer, as ``os.write`` and
    ``os.fsync`` do, so the hash (about 40 ms per 80 MB on the reference machine) and the
    write and flush (about as long) overlap. With ``_thread``, always loaded, not
    ``threading``: a pinion's child imports no ``threading`` (its at-fork hooks and memory,
    see tests/test_preload.py); the thread ends before this returns, also when ``work``
    raises (it reads the array's memory)."""
    got: list[Any] = []
    done = _thread.allocate_lock()
    done.acquire()

    def hash_parts() -> None:
        try:
            got.append(_sha256(parts))
        except BaseException as exc:  # handed to the caller below
            got.append(exc)
        finally:
            done.release()

    try:
        _thread.start_new_thread(hash_parts, ())
    except RuntimeError:  # no thread to be had (a limit on processes): one after the other
        hash_parts()
    try:
        work()
    finally:
        done.acquire()
    if isinstance(got[0], BaseException):
        raise got[0]
    return str(got[0])


def _json(descr: Any) -> Any:
    """A dtype description as JSON (its tuples as lists)."""
    if isinstance(descr, tuple | list):
        return [_json(d) for d in descr]
    return descr


# --- reading back -------------------------------------------------------------------------

class ValueSource(Protocol):
    """Where the stored values of some Results are read back from."""

    def load(self, ref: dict[str, Any], what: str) -> Any:
        """The array or frame ``ref`` names (``what``: the value, for messages)."""


class Opener(Protocol):
    def has_blob(self, sha256: str) -> bool: ...

    def open_blob(self, sha256: str) -> BinaryIO: ...

    def get_results(self, id_or_prefix: str) -> Any: ...


class BlobValues:
    """Values in a queue's content store: ``open_store()`` opens it for each value read
    (``caliber.get_results()`` returns before its values are read). A store that learns
    where blobs are from the Results naming them (the remote queue) reads Results
    ``results_id`` again first."""

    def __init__(self, open_store: Callable[[], AbstractContextManager[Opener]],
                 results_id: str | None = None) -> None:
        self.open_store = open_store
        self.results_id = results_id

    def load(self, ref: dict[str, Any], what: str) -> Any:
        with self.opened(ref, what) as (stream, check):
            return read_value(stream, ref, what, check=check)

    @contextmanager
    def opened(self, ref: dict[str, Any], what: str) -> Iterator[tuple[BinaryIO, bool]]:
        """The blob ``ref`` names, open, and whether its SHA-256 is to be checked as it is
        read (not for a sealed blob of the local store, see :func:`_sealed`): for a reader
        of its own, such as :class:`ArrayReader`. NotFoundError or QueueError naming
        ``what`` when it cannot be had."""
        with self.open_store() as store:
            try:
                if self.results_id is not None and not store.has_blob(ref["sha256"]):
                    store.get_results(self.results_id)
                stream = store.open_blob(ref["sha256"])
            except NotFoundError as exc:
                raise NotFoundError(f"{what} cannot be read: {exc}") from exc
            except AttributeError:  # a queue kind without a content store
                raise QueueError(f"{what} cannot be read: this queue keeps no arrays") from None
            with stream:
                yield stream, not _sealed(stream, ref)


def _sealed(stream: BinaryIO, ref: dict[str, Any]) -> bool:
    """Whether ``stream`` is a blob of the local store not written since it was stored: then
    its bytes are not hashed again as they are read, only its size and header checked.

    Why that is enough there: the blob is a file in a 0700 folder of the user's own, named
    only once its bytes were hashed (by the process that wrote them) and flushed to disk,
    and the Results naming its SHA-256 are signed; what could change it afterwards is a
    write through the file system (an edit by hand, ``numpy.load(mmap_mode="r+")``), which
    also sets its modification time and so breaks the seal (then it is hashed as it is read,
    as is every blob of a remote store, a file copied without its times, or one stored by
    an older Caliber). Not caught: a disk that changes bytes under the file system, or a
    change whose writer puts the seal back on purpose."""
    from caliber.queue.blobs import is_sealed  # here: a pinion's child has no store

    return is_sealed(stream, ref["size"])


class FolderValues:
    """Values as files in a run's values folder (a resumed run's, fetched by the pinion)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def load(self, ref: dict[str, Any], what: str) -> Any:
        try:
            stream = open(self.folder / file_name(ref), "rb")  # noqa: SIM115
        except FileNotFoundError:
            raise NotFoundError(
                f"{what} cannot be read: {file_name(ref)} is not in {self.folder}") from None
        with stream:
            return read_value(stream, ref, what)


class KeptValues:
    """Values kept in memory by a run that stores nothing (``Workflow.run(store=False)``)."""

    def __init__(self, kept: dict[str, Any]) -> None:
        self.kept = kept

    def load(self, ref: dict[str, Any], what: str) -> Any:
        try:
            return self.kept[ref["sha256"]]
        except KeyError:
            raise NotFoundError(f"{what} cannot be read: it was not kept") from None


def read_value(stream: BinaryIO, ref: dict[str, Any], what: str, *,
               check: bool = True) -> Any:
    """The array or frame in ``stream``, whose bytes must be those ``ref`` names
    (BlobMismatchError naming ``what`` otherwise): their SHA-256 checked, or with ``check``
    false (a sealed blob of the local store, see :class:`BlobValues`) their size and, for an
    array, its header."""
    if ref[REF_KEY] == NDARRAY:
        return read_array(stream, ref, what, check=check)
    return read_frame(stream, ref, what, check=check)


def _damaged(what: str, ref: dict[str, Any], why: str) -> BlobMismatchError:
    return BlobMismatchError(f"{what} is damaged: blob {ref['sha256']} {why}; it was changed "
                             "or cut short where it is stored, and is not used")


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_header(stream: BinaryIO, ref: dict[str, Any]) -> tuple[bytes, Any, bool, Any]:
    """The ``.npy`` header at the start of ``stream``: its bytes, and the shape, memory order
    (Fortran or not) and dtype it gives, which must be those ``ref`` describes (ValueError
    saying what is wrong otherwise)."""
    from numpy.lib import format as npy

    start = _read_exact(stream, 8)
    if len(start) < 8 or not start.startswith(_NPY_MAGIC) or start[6] not in (1, 2):
        raise ValueError("is not a .npy file")
    width = 2 if start[6] == 1 else 4
    length_bytes = _read_exact(stream, width)
    header = start + length_bytes + _read_exact(stream, int.from_bytes(length_bytes, "little"))
    try:
        read = npy.read_array_header_1_0 if width == 2 else npy.read_array_header_2_0
        shape, fortran, dtype = read(io.BytesIO(header[8:]))
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"has no readable .npy header ({exc})") from None
    if (dtype.hasobject or list(shape) != ref.get("shape")
            or _json(npy.dtype_to_descr(dtype)) != ref.get("dtype")):
        raise ValueError("does not hold the array its reference describes")
    return header, shape, fortran, dtype


def read_array(stream: BinaryIO, ref: dict[str, Any], what: str, *,
               check: bool = True) -> Any:
    """A ``.npy`` stream as an array, read once into the array's own memory (no other copy),
    its header and size checked against ``ref``, and with ``check`` its SHA-256 too."""
    import numpy

    try:
        header, shape, fortran, dtype = read_header(stream, ref)
    except ValueError as exc:
        raise _damaged(what, ref, str(exc)) from None
    digest = hashlib.sha256(header) if check else None
    array = numpy.empty(shape, dtype=dtype, order="F" if fortran else "C")
    view = (array.T if fortran else array).reshape(-1).view(numpy.uint8).data
    done = 0
    readinto = getattr(stream, "readinto", None)
    while done < view.nbytes:
        piece = view[done:done + WRITE_CHUNK]
        if readinto is not None:
            got = readinto(piece) or 0
        else:
            chunk = stream.read(len(piece))
            got = len(chunk)
            piece[:got] = chunk
        if not got:
            break
        if digest is not None:
            digest.update(view[done:done + got])
        done += got
    size = len(header) + done + len(stream.read(1))
    if digest is not None and (size != ref["size"] or digest.hexdigest() != ref["sha256"]):
        raise _damaged(what, ref, f"does not match its SHA-256 ({size} bytes read, "
                       f"{ref['size']} stored)")
    if size != ref["size"]:
        raise _damaged(what, ref, f"has {size} bytes, not the {ref['size']} stored")
    return array


class ArrayReader:
    """A stored array read slice by slice, in memory bounded by :data:`READ_SLICE` whatever
    its size (the dashboard reduces 10**7 numbers to a plot this way): the ``.npy`` header is
    read and checked against ``ref`` at once (BlobMismatchError naming ``what``), then
    :meth:`slices` gives the items and checks the whole, as :func:`read_array` does."""

    def __init__(self, stream: BinaryIO, ref: dict[str, Any], what: str, *,
                 check: bool = True) -> None:
        try:
            header, shape, fortran, dtype = read_header(stream, ref)
        except ValueError as exc:
            raise _damaged(what, ref, str(exc)) from None
        self.shape: tuple[int, ...] = tuple(shape)
        self.fortran: bool = fortran
        """Whether the items come in Fortran order (the first index varying fastest)."""
        self.dtype = dtype
        self.size = math.prod(self.shape)
        self._stream, self._ref, self._what = stream, ref, what
        self._header = len(header)
        self._digest = hashlib.sha256(header) if check else None

    def slices(self) -> Iterator[tuple[int, Any]]:
        """(index of its first item, its items as a 1-D array) for each slice of at most
        :data:`READ_SLICE` bytes, in the file's order (:attr:`fortran`). A slice is one
        buffer used again for the next: use it before asking for the next. Once the last is
        given, the size and (with ``check``) the SHA-256 of the whole are checked:
        BlobMismatchError then, so nothing computed from the slices may be used before this
        iterator ends."""
        import numpy

        itemsize = max(self.dtype.itemsize, 1)
        per = max(READ_SLICE // itemsize, 1)
        buffer = numpy.empty(min(per, self.size), dtype=self.dtype)
        raw = buffer.view(numpy.uint8).data
        readinto = getattr(self._stream, "readinto", None)
        done = read = 0
        while done < self.size:
            want = min(per, self.size - done) * itemsize
            got = 0
            while got < want:
                piece = raw[got:want]
                if readinto is not None:
                    n = readinto(piece) or 0
                else:
                    chunk = self._stream.read(len(piece))
                    n = len(chunk)
                    piece[:n] = chunk
                if not n:
                    break
                got += n
            if self._digest is not None:
                self._digest.update(raw[:got])
            read += got
            if got < want:
                break
            yield done, buffer[:want // itemsize]
            done += want // itemsize
        size = self._header + read + len(self._stream.read(1))
        ref, what = self._ref, self._what
        if self._digest is not None and (size != ref["size"]
                                         or self._digest.hexdigest() != ref["sha256"]):
            raise _damaged(what, ref, f"does not match its SHA-256 ({size} bytes read, "
                           f"{ref['size']} stored)")
        if size != ref["size"]:
            raise _damaged(what, ref, f"has {size} bytes, not the {ref['size']} stored")


def read_frame(stream: BinaryIO, ref: dict[str, Any], what: str, *,
               check: bool = True) -> Any:
    """A Parquet stream as a pandas DataFrame, its size and (with ``check``) its SHA-256
    checked first."""
    data = stream.read()
    if len(data) != ref["size"] or (check and hashlib.sha256(data).hexdigest() != ref["sha256"]):
        raise _damaged(what, ref, f"does not match its SHA-256 ({len(data)} bytes read, "
                       f"{ref['size']} stored)")
    try:
        import pandas
    except ImportError:
        raise QueueError(f"{what} is a pandas DataFrame: install pandas and pyarrow to read "
                         "it") from None
    return pandas.read_parquet(io.BytesIO(data), engine="pyarrow")


# --- the store: a pinion's (and ``workflow run``'s) side ------------------------------------

def put_values(store: BlobStore, folder: Path, refs: dict[str, dict[str, Any]]) -> str | None:
    """Put the file of each reference (in ``folder``, where the run wrote it) into ``store``,
    and remove it there. Returns what is wrong, or None: a reference whose file the run did
    not write (a value may only name arrays of its own run), or a file that is no longer as
    it was written. A blob the store holds already is not stored again.

    A store of files on this machine (the local queue's) takes each file in by moving it,
    without hashing it again (:meth:`~caliber.queue.blobs.FolderBlobStore.take_blob`): the
    run's process hashed the bytes as it wrote them. What is checked here is what costs no
    pass over the data: the file is a regular file of the size written, with no other link,
    and an array's ``.npy`` header still describes it. Other stores (the remote queue's)
    read it through SHA-256 as they upload it (``put_blob``), and a file whose bytes no
    longer have the name is refused."""
    from caliber.queue.blobs import BlobRef, FileBlobStore

    problem = None
    for sha, ref in refs.items():
        path = folder / file_name(ref)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            problem = problem or (f"a value refers to {file_name(ref)}, which the run did "
                                  f"not write in {folder}")
            continue
        if not store.has_blob(sha):
            why = None
            try:
                if isinstance(store, FileBlobStore):
                    why = _unlike(path, st, ref)
                    stored = None if why else store.take_blob(path, BlobRef(sha, ref["size"]))
                else:
                    stored = store.put_blob(path)
            except BlobMismatchError as exc:  # changed since it was looked at
                why, stored = str(exc), None
            if stored is not None and (stored.sha256 != sha or stored.size != ref["size"]):
                why = f"its SHA-256 is now {stored.sha256}"
            if why is not None:
                problem = problem or f"{path} changed after the run wrote it ({why})"
        path.unlink(missing_ok=True)
    for empty in (folder, folder.parent):  # .caliber/values, then .caliber, when left empty
        try:
            empty.rmdir()
        except OSError:
            break
    return problem


def _unlike(path: Path, st: os.stat_result, ref: dict[str, Any]) -> str | None:
    """How the file a run wrote for ``ref`` is no longer what was written, as far as can be
    seen without reading its data: its size, other links to it, an array's header."""
    if st.st_size != ref["size"]:
        return f"{st.st_size} bytes, {ref['size']} written"
    if st.st_nlink != 1:
        return "another link to it was made"
    if ref[REF_KEY] == NDARRAY:
        try:
            with open(path, "rb") as stream:
                read_header(stream, ref)
        except ValueError as exc:
            return f"it {exc}"
    return None


def fetch_values(store: BlobStore, folder: Path, refs: dict[str, dict[str, Any]], *,
                 between: Callable[[], object] | None = None) -> None:
    """Write the blob of each reference into ``folder`` (a resumed run's values), checked
    against its SHA-256 on the way (BlobMismatchError, NotFoundError); ``between`` called
    before every chunk read (what it raises goes through)."""
    from caliber.queue.blobs import fetch_paced  # here: a pinion's child has no store

    if not refs:
        return
    make_private_folder(folder)
    for sha, ref in refs.items():
        dest = folder / file_name(ref)
        if not os.path.lexists(dest):
            fetch_paced(store, sha, dest, between=between)


# --- for people -----------------------------------------------------------------------------

def describe(value: Any) -> str:
    """A stored array or frame in one line, instead of its millions of numbers:
    ``array float64 (10000000,): min 2.74e-08, max 1, mean 0.500023``."""
    import numpy

    if isinstance(value, numpy.ndarray):
        text = f"array {value.dtype.name} {tuple(value.shape)}"
        if value.size and value.dtype.kind in "biuf":
            with numpy.errstate(all="ignore"):  # NaN are passed over by min and max
                low = numpy.fmin.reduce(value, axis=None)
                high = numpy.fmax.reduce(value, axis=None)
                mean = value.mean(dtype=numpy.float64)
            text += f": min {_number(low)}, max {_number(high)}, mean {_number(mean)}"
        return text
    rows, columns = value.shape
    names = [str(c) for c in list(value.columns)[:8]]
    more = ", ..." if columns > len(names) else ""
    return f"DataFrame {rows} rows x {columns} columns: {', '.join(names)}{more}"


def describe_slices(array: ArrayReader) -> str:
    """What :func:`describe` says of a stored array, read slice by slice (memory bounded by a
    slice whatever its size; the mean summed slice by slice, so its last digits may differ).
    BlobMismatchError when the array is found damaged (after the last slice)."""
    import numpy

    text = f"array {array.dtype.name} {array.shape}"
    if not array.size or array.dtype.kind not in "biuf":
        for _ in array.slices():  # read to the end all the same: checked
            pass
        return text
    low = high = None
    total = 0.0
    with numpy.errstate(all="ignore"):  # NaN are passed over by min and max
        for _, items in array.slices():
            a, b = numpy.fmin.reduce(items), numpy.fmax.reduce(items)
            low = a if low is None else numpy.fmin(low, a)
            high = b if high is None else numpy.fmax(high, b)
            total += float(items.sum(dtype=numpy.float64))
        mean = numpy.float64(total) / array.size
    return text + f": min {_number(low)}, max {_number(high)}, mean {_number(mean)}"


def describe_ref(ref: dict[str, Any]) -> str:
    """What a reference alone says (its value not read): ``array float64 (10000000,)``."""
    if ref[REF_KEY] == DATAFRAME:
        return f"DataFrame {' x '.join(str(n) for n in ref.get('shape', []))}"
    dtype = ref.get("dtype")
    try:
        import numpy

        dtype = numpy.dtype(dtype if isinstance(dtype, str) else
                            [tuple(field) for field in dtype or []]).name
    except Exception:  # numpy missing, or a description it cannot read
        pass
    return f"array {dtype} {tuple(ref.get('shape') or ())}"


def _number(value: Any) -> str:
    item = value.item()
    return f"{item:.6g}" if isinstance(item, float) else str(item)
