"""The run-secret: an HMAC-SHA256 over everything that decides what a workload runs.

The key is ``CALIBER_SECRET_KEY`` (environment or ``.caliber/.env``) or the key file
``secret.key`` in the user's config folder, created on first use with permissions 0600 (a key
file others can read is refused). The signed message is a canonical JSON encoding of the
workload's id, workflow document, every attachment (:func:`attachment_entry`: its path,
SHA-256, size, mode and, for an attachment by reference, the path it refers to), pinion name
and creation time, and its scheduling fields where they are set (:func:`plan_fields`: what it
runs after, when it may start, its priority, where its outcome is sent). Attachment bytes
are not read here: the pinion checks each one against its hash as it writes it into the run
folder (the stored bytes, :mod:`caliber.queue.blobs`; a file by reference), and refuses the
workload when one does not match. Only the inline attachments of older queues are checked
here, against their content.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from caliber.errors import SecretKeyError
from caliber.paths import config_dir
from caliber.platform import make_private_folder, readable_by_others
from caliber.settings import lookup

if TYPE_CHECKING:  # pydantic stays out of the fast read paths that verify raw rows
    from caliber.queue.workload import Workload

KEY_ENV = "CALIBER_SECRET_KEY"
KEY_FILE = "secret.key"
MIN_KEY_LENGTH = 16  # characters (bytes)
MAX_KEY_FILE = 4096  # bytes


def key_path() -> Path:
    return config_dir() / KEY_FILE


def load_key() -> bytes:
    """This user's secret key, creating the key file on first use (SecretKeyError, one line,
    when the variable or the file cannot be used)."""
    env = lookup(KEY_ENV)  # the settings' source: a .caliber/.env only if it is your own
    if env is not None:
        return key_from_setting(env)
    path = key_path()
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        if path.is_symlink():
            raise SecretKeyError(
                f"secret key file {path} is a link to nothing ({os.readlink(path)}); remove "
                "it (a new key is made) or link it to your key file"
            ) from None
    try:
        return _create_key_file(path)
    except FileExistsError:  # another process made it first
        return _read_key_file(path)
    except OSError as exc:
        raise SecretKeyError(
            f"cannot create the secret key file {path}: {exc.strerror or exc}"
        ) from exc


def key_from_setting(value: str) -> bytes:
    """``CALIBER_SECRET_KEY``'s value as a key (SecretKeyError when it cannot be one)."""
    try:
        key = value.encode("utf-8")
    except UnicodeEncodeError:  # a byte that is not UTF-8 (kept as a lone surrogate)
        raise SecretKeyError(
            f"{KEY_ENV} holds a byte that is not UTF-8 text; make a key with: "
            "python -c 'import secrets; print(secrets.token_hex(32))'"
        ) from None
    if len(key) < MIN_KEY_LENGTH:
        raise SecretKeyError(
            f"{KEY_ENV} is too short (at least {MIN_KEY_LENGTH} characters; "
            "make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return key


def _create_key_file(path: Path) -> bytes:
    """Write a new key to a private temporary file, then link it into place: the key file
    appears complete or not at all, and never with wider permissions than 0600."""
    make_private_folder(path.parent)  # 0700, each level
    key = secrets.token_hex(32)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="ascii") as f:
            f.write(key + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # FileExistsError when another process won the race
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links: create in place instead
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(key + "\n")
    finally:
        tmp.unlink(missing_ok=True)
    return key.encode("ascii")


def _read_key_file(path: Path) -> bytes:
    """The key file's bytes, surrounding whitespace stripped (FileNotFoundError when absent).
    Opened without blocking and checked to be a regular file, so a FIFO or a device there
    cannot hang the command; read as bytes, so two different files never give one key."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise SecretKeyError(_unusable(path, exc.strerror or str(exc))) from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
            raise SecretKeyError(_unusable(path, what))
        if readable_by_others(st):
            raise SecretKeyError(
                f"secret key file {path} can be read by other users (mode "
                f"{stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
            )
        key = os.read(fd, MAX_KEY_FILE + 1).strip()
    except OSError as exc:
        raise SecretKeyError(_unusable(path, exc.strerror or str(exc))) from exc
    finally:
        os.close(fd)
    if len(key) > MAX_KEY_FILE:
        raise SecretKeyError(_unusable(path, f"longer than {MAX_KEY_FILE} bytes"))
    if len(key) < MIN_KEY_LENGTH:
        raise SecretKeyError(f"secret key file {path} is empty or too short")
    return key


def _unusable(path: Path, why: str) -> str:
    return (f"secret key file {path} cannot be used ({why}); move it away (a new key is made)"
            f" or set {KEY_ENV}")


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key (never the key itself)."""
    return hashlib.sha256(b"caliber-key-id:" + key).hexdigest()[:16]


class DamagedEntry(ValueError):
    """A stored workload whose signed fields cannot be read as they were signed: it can never
    be checked, so it never runs (shown as damaged)."""


def attachment_entry(a: Mapping[str, Any]) -> list[Any]:
    """What the run-secret signs of one attachment (its JSON form): ``[path, sha256]`` for
    the attachments of older queues, which have no mode (inline, or moved into the store by
    the local queue's migration: signed so before, so their secrets still check); ``[path,
    sha256, size, mode]`` for a stored one, ``[path, sha256, size, mode, reference]`` for one
    by reference. The forms sign different lists, so none can pass for another (dropping the
    mode to make an executable look like an old file breaks the signature)."""
    mode = a.get("mode")
    if mode is None:
        if a.get("reference") is not None:
            raise DamagedEntry("an attachment by reference has no mode")
        return [a["path"], a["sha256"]]
    entry = [a["path"], a["sha256"], a["size"], mode]
    if a.get("reference") is not None:
        entry.append(a["reference"])
    return entry


def _message(workload_id: str, workflow: Any, attachments: Iterable[list[Any]],
             pinion: str, created_at: str, plan: Mapping[str, Any] | None = None) -> bytes:
    payload = {
        "id": workload_id,
        "workflow": workflow,
        "attachments": sorted(attachments, key=_entry_key),
        "pinion": pinion,
        "created_at": created_at,
        **(plan or {}),
    }
    return canonical_json(payload)


PLAN_KEYS = ("after", "not_before", "priority", "notify")
"""The scheduling fields a run-secret signs besides the workflow (``workflow queue --after,
--not-before, --priority, --notify``): each decides what runs, when, or where its outcome is
sent."""


def plan_fields(*, after: Any = (), not_before: Any = None, priority: Any = 0,
                notify: Any = None) -> dict[str, Any]:
    """The scheduling fields as signed: only those that differ from their default (a workload
    without them signs the bytes it always did, so earlier run-secrets stay valid).
    ``not_before`` in its stored form (:func:`signed_time`); ``after`` in the order given."""
    plan: dict[str, Any] = {}
    if after:
        plan["after"] = list(after)
    if not_before is not None:
        plan["not_before"] = not_before
    if priority != 0:
        plan["priority"] = priority
    if notify is not None:
        plan["notify"] = notify
    return plan


def _entry_key(entry: list[Any]) -> tuple[str, ...]:
    """Entries sort by their text (paths are unique; old entries sorted so as lists did)."""
    return tuple(str(part) for part in entry)


def canonical_json(payload: Any) -> bytes:
    """The one encoding every signature here signs: JSON with sorted keys, no spaces, UTF-8,
    no NaN (DamagedEntry when ``payload`` cannot be encoded so)."""
    try:
        return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                          allow_nan=False).encode("utf-8")
    except (ValueError, TypeError, RecursionError) as exc:  # NaN, a lone surrogate, ...
        raise DamagedEntry(f"its signed fields cannot be encoded ({exc})") from exc


def signed_time(moment: dt.datetime) -> str:
    """A creation time in the one form that is signed and stored (UTC, microseconds)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds")


def stored_time(text: str) -> dt.datetime:
    """A stored creation time, which must be in its signed form: the same instant written
    with another offset would sort elsewhere in the queue (DamagedEntry)."""
    moment = dt.datetime.fromisoformat(text)
    if signed_time(moment) != text:
        raise DamagedEntry(f"created_at {text!r} is not in the form it was signed in")
    return moment


def attachment_data(encoding: str, content: str | None) -> bytes:
    """An attachment's bytes from its stored form (DamagedEntry when they cannot be)."""
    try:
        if not isinstance(content, str):
            raise TypeError("it has no content")
        if encoding == "text":
            return content.encode("utf-8")
        if encoding == "base64":
            return base64.b64decode(content, validate=True)
    except (ValueError, TypeError, AttributeError) as exc:  # binascii.Error, lone surrogate
        raise DamagedEntry(f"an attachment's content cannot be decoded ({exc})") from exc
    raise DamagedEntry(f"an attachment has an unknown encoding {encoding!r}")


def canonical_message(workload: Workload) -> bytes:
    """The bytes the run-secret signs."""
    return _message(
        workload.id, workload.workflow,
        (attachment_entry({"path": a.path, "sha256": a.sha256, "size": a.size,
                           "mode": a.mode, "reference": a.reference, "content": a.content})
         for a in workload.attachments),
        workload.pinion, signed_time(workload.created_at), workload_plan(workload),
    )


def workload_plan(workload: Workload) -> dict[str, Any]:
    """A workload's signed scheduling fields (:func:`plan_fields`)."""
    return plan_fields(
        after=workload.after, priority=workload.priority, notify=workload.notify,
        not_before=None if workload.not_before is None else signed_time(workload.not_before))


def problem(workload: Workload) -> str | None:
    """Why a workload read back from a queue can never be checked (its signed fields or an
    attachment cannot be encoded as they were signed), or None. Backends mark such a
    workload damaged, as :func:`verify_raw` makes ``queue list`` show it."""
    try:
        canonical_message(workload)
        for a in workload.attachments:
            if a.content is not None:
                attachment_data(a.encoding or "", a.content)
    except DamagedEntry as exc:
        return str(exc)
    return None


def sign(workload: Workload, key: bytes) -> str:
    return hmac.new(key, canonical_message(workload), hashlib.sha256).hexdigest()


def verify(workload: Workload, key: bytes) -> bool:
    """Whether the workload was signed with ``key`` and its attachments are unchanged: what
    :func:`verify_raw` says of it as stored. Never raises: a damaged workload is False."""
    try:
        return verify_raw(
            key, workload_id=workload.id, workflow=workload.workflow,
            attachments=[a.model_dump(exclude_none=True) for a in workload.attachments],
            pinion=workload.pinion, created_at=signed_time(workload.created_at),
            secret=workload.secret, plan=workload_plan(workload),
        )
    except DamagedEntry:
        return False


def verify_raw(key: bytes, *, workload_id: str, workflow: Any,
               attachments: Iterable[Mapping[str, Any]], pinion: str, created_at: str,
               secret: str, plan: Mapping[str, Any] | None = None) -> bool:
    """The one check of a run-secret, on a stored entry as plain data (``created_at`` as
    stored, attachments as their JSON dicts): every inline attachment's content has its
    recorded SHA-256 and size (the other forms' bytes are not read: the pinion checks them),
    and the HMAC over exactly the signed bytes matches (constant time). ``plan``: its
    scheduling fields as stored (:func:`plan_fields`; a stored ``not_before`` must be in its
    signed form). DamagedEntry when the entry cannot be read as it was signed."""
    stored_time(created_at)
    if plan and plan.get("not_before") is not None:
        stored_time(plan["not_before"])
    entries = []
    try:
        for a in attachments:
            if a.get("content") is not None:
                data = attachment_data(a.get("encoding") or "", a["content"])
                if hashlib.sha256(data).hexdigest() != a["sha256"] or len(data) != a["size"]:
                    return False
            entries.append(attachment_entry(a))
    except (KeyError, AttributeError) as exc:
        raise DamagedEntry(f"an attachment lacks a field ({exc!r})") from exc
    if not isinstance(secret, str):
        raise DamagedEntry("its run-secret is not text")
    expected = hmac.new(key, _message(workload_id, workflow, entries, pinion, created_at,
                                      plan), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), secret.encode("utf-8", "replace"))


# --- mismatch marks: the keys a workload was found not to be signed with ------------------

def mismatch_marked(marks: str | None, key_id_: str) -> bool:
    """Whether ``marks`` (key ids separated by spaces, as stored) holds ``key_id_``."""
    return key_id_ in (marks or "").split()


def add_mismatch(marks: str | None, key_id_: str | None) -> str | None:
    """``marks`` with ``key_id_`` added: every key that found a mismatch is remembered, so
    pinions with different wrong keys each pass the workload over after one look."""
    if key_id_ is None or mismatch_marked(marks, key_id_):
        return marks
    return f"{marks} {key_id_}" if marks else key_id_


# --- Results signatures and resume grants -----------------------------------------------
#
# A resumed run reuses values instead of computing them: they must come from a key holder as
# much as the code does. Whoever stores Results with the key (a pinion, ``workflow run``)
# signs what a resume reuses (:func:`sign_results`); ``queue retry --resume`` grants one
# workload the reuse of one signed Results (:func:`sign_grant`). A pinion checks both with its
# key before it hands anything to a child (:mod:`caliber.queue.resume`).

RESULTS_KIND = "caliber results/1"
GRANT_KIND = "caliber resume grant/1"
TASK_SIGNED = ("name", "path", "branch", "status", "return", "g_set", "g_deleted",
               "code_file", "code_sha256", "reused_from")
"""The keys of each task's JSON record that a Results signature covers: everything a resume
reuses or checks. The rest (times, durations, errors, conversion notes, the ``reuse`` note) is
only shown."""
TASK_SIGNED_FINGERPRINTS = ("code_fingerprint", "inputs_fingerprint")
"""Keys a Results signature covers too since code fingerprints: signed as one more item of
the task's list, ``{key: value}`` of those that are set, only when one is (so the Results a
Caliber from before them signed still check as they were signed)."""


def _task_signed(task: Mapping[str, Any]) -> list[Any]:
    signed = [task[name] for name in TASK_SIGNED]
    later = {name: task[name] for name in TASK_SIGNED_FINGERPRINTS
             if task.get(name) is not None}
    return [*signed, later] if later else signed


FILE_SIGNED = ("path", "size", "sha256", "mode")
"""The keys of each result file's record that a Results signature covers: all of them.
``caliber results files`` writes files onto the machine that asks by these records, and a
resumed run starts with them written back into its run folder, where the tasks it runs again
read them (:func:`caliber.results.files.write_back`): a record changed in the store by
someone without the key (another path, another blob) would put bytes the pinion never
collected there. So the list is signed, and checked before any file is written
(:func:`caliber.results.files.check_signed`; a pinion checks the whole Results before a
resume); the blob's own bytes are checked against the signed SHA-256 as they are fetched."""


UPSTREAM_SIGNED = ("workload", "workflow", "results", "signature", "tasks")
"""The keys of each record of the upstream Results a run took its ``$results`` values from
(``Results.upstream``) that a Results signature covers: all of them. They say which analysis
run a post-processing's values came from (the upstream Results' own signature as they were
taken), months later too: changed in the store by someone without the key, the Results no
longer check (a resume, a workload taking their values and ``caliber results show`` say so).
Left out when a run took no upstream values: every Results signed before stay valid."""


def results_message(results: Mapping[str, Any]) -> bytes:
    """The bytes a Results signature signs, from the Results' JSON form (as
    ``Results.to_json_dict()`` gives it and the stores keep it): the Results, workload and
    workflow ids and names, the run status, the Results it resumed, every task's
    :data:`TASK_SIGNED` fields in order (and its :data:`TASK_SIGNED_FINGERPRINTS`), the final
    ``g``, when there are any, every result file's :data:`FILE_SIGNED` fields in order and,
    when it took upstream values, every upstream record's :data:`UPSTREAM_SIGNED` fields in
    order. DamagedEntry when they cannot be read or encoded."""
    try:
        tasks = [_task_signed(task) for task in results["tasks"]]
        payload = {
            "kind": RESULTS_KIND, "id": results["id"], "workload_id": results["workload_id"],
            "workflow": results["workflow"], "status": results["status"],
            "resumed_from": results["resumed_from"], "tasks": tasks, "g": results["g"],
        }
        files = results.get("files")
        if files:  # left out when none: Results signed before there were files still check
            payload["files"] = [[f[name] for name in FILE_SIGNED] for f in files]
        upstream = results.get("upstream")
        if upstream:  # left out when none: Results signed before there were records check
            payload["upstream"] = [[u[name] for name in UPSTREAM_SIGNED] for u in upstream]
    except (KeyError, TypeError, AttributeError) as exc:
        raise DamagedEntry(f"the Results lack a signed field ({exc!r})") from exc
    return canonical_json(payload)


def sign_results(results: Mapping[str, Any], key: bytes) -> str:
    """The Results signature (hex): HMAC-SHA256 with ``key`` over :func:`results_message`."""
    return hmac.new(key, results_message(results), hashlib.sha256).hexdigest()


def results_signed(results: Mapping[str, Any], key: bytes) -> bool:
    """Whether the Results (JSON form) carry a signature made with ``key`` over exactly what
    they hold now (constant time). Never raises: unsigned or damaged Results are False."""
    signature = results.get("signature") if isinstance(results, Mapping) else None
    if not isinstance(signature, str):
        return False
    try:
        expected = sign_results(results, key)
    except DamagedEntry:
        return False
    return hmac.compare_digest(expected.encode(), signature.encode("utf-8", "replace"))


def grant_message(workload_id: str, results_id: str, results_signature: str) -> bytes:
    """The bytes a resume grant signs: this workload may reuse these Results, as they were
    signed (their signature, so an edit of the Results after the grant breaks it too)."""
    return canonical_json({"kind": GRANT_KIND, "workload": workload_id,
                           "results": results_id, "results_signature": results_signature})


def sign_grant(workload_id: str, results_id: str, results_signature: str, key: bytes) -> str:
    """The resume grant (hex) of ``queue retry --resume``: HMAC-SHA256 with ``key``."""
    message = grant_message(workload_id, results_id, results_signature)
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def grant_ok(key: bytes, *, workload_id: Any, results_id: Any, results_signature: Any,
             grant: Any) -> bool:
    """Whether ``grant`` was made with ``key`` for exactly this workload, Results id and
    Results signature (constant time). Never raises: anything missing or not text is
    False."""
    values = (workload_id, results_id, results_signature, grant)
    if not all(isinstance(v, str) for v in values):
        return False
    try:
        expected = sign_grant(workload_id, results_id, results_signature, key)
    except DamagedEntry:
        return False
    return hmac.compare_digest(expected.encode(), grant.encode("utf-8", "replace"))


def resume_ok(key: bytes, *, workload_id: Any, resume_from: Any, results_signature: Any,
              grant: Any, secret_ok: bool, marks: str | None) -> bool | None:
    """What ``queue list`` says of a workload's resume, from its stored fields alone (no
    Results read): None when it resumes nothing; else whether its grant checks with ``key``
    and no pinion with that key found the Results it resumes not signed with it (then the
    workload is marked with the key's id while its run-secret checks)."""
    if resume_from is None:
        return None
    if secret_ok and mismatch_marked(marks, key_id(key)):
        return False
    return grant_ok(key, workload_id=workload_id, results_id=resume_from,
                    results_signature=results_signature, grant=grant)
