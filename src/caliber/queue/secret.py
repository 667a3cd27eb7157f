"""The run-secret: an HMAC-SHA256 over everything that decides what a workload runs.

The key is ``CALIBER_SECRET_KEY`` (environment or ``.caliber/.env``) or the key file
``secret.key`` in the user's config folder, created on first use with permissions 0600 (a key
file others can read is refused). The signed message is a canonical JSON encoding of the
workload's id, workflow document, every attachment's path and SHA-256, pinion name and
creation time; attachment hashes are checked against the content before the secret is trusted.
"""

from __future__ import annotations

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
from caliber.platform import readable_by_others
from caliber.settings import lookup

if TYPE_CHECKING:  # pydantic stays out of the fast read paths that verify raw rows
    from caliber.queue.workload import Workload

KEY_ENV = "CALIBER_SECRET_KEY"
KEY_FILE = "secret.key"
MIN_KEY_LENGTH = 16  # characters


def key_path() -> Path:
    return config_dir() / KEY_FILE


def load_key() -> bytes:
    """This user's secret key, creating the key file on first use."""
    env = lookup(KEY_ENV)
    if env is not None:
        key = env.encode("utf-8")
        if len(key) < MIN_KEY_LENGTH:
            raise SecretKeyError(
                f"{KEY_ENV} is too short (at least {MIN_KEY_LENGTH} characters; "
                "make one with: python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        return key
    path = key_path()
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    try:
        return _create_key_file(path)
    except FileExistsError:  # another process made it first
        return _read_key_file(path)
    except OSError as exc:
        raise SecretKeyError(
            f"cannot create the secret key file {path}: {exc.strerror or exc}"
        ) from exc


def _create_key_file(path: Path) -> bytes:
    """Write a new key to a private temporary file, then link it into place: the key file
    appears complete or not at all, and never with wider permissions than 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
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
    st = path.stat()
    if readable_by_others(st):
        raise SecretKeyError(
            f"secret key file {path} can be read by other users (mode "
            f"{stat.S_IMODE(st.st_mode):o}); run: chmod 600 {path}"
        )
    key = path.read_text(encoding="utf-8", errors="replace").strip()
    if len(key) < MIN_KEY_LENGTH:
        raise SecretKeyError(f"secret key file {path} is empty or too short")
    return key.encode("utf-8")


def key_id(key: bytes) -> str:
    """A short public fingerprint of a key (never the key itself)."""
    return hashlib.sha256(b"caliber-key-id:" + key).hexdigest()[:16]


def _message(workload_id: str, workflow: Any, attachments: Iterable[tuple[str, str]],
             pinion: str, created_at: str) -> bytes:
    payload = {
        "id": workload_id,
        "workflow": workflow,
        "attachments": sorted([path, sha256] for path, sha256 in attachments),
        "pinion": pinion,
        "created_at": created_at,
    }
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def canonical_message(workload: Workload) -> bytes:
    """The bytes the run-secret signs."""
    return _message(
        workload.id, workload.workflow, ((a.path, a.sha256) for a in workload.attachments),
        workload.pinion,
        workload.created_at.astimezone(dt.UTC).isoformat(timespec="microseconds"),
    )


def sign(workload: Workload, key: bytes) -> str:
    return hmac.new(key, canonical_message(workload), hashlib.sha256).hexdigest()


def verify(workload: Workload, key: bytes) -> bool:
    """Whether the workload was signed with ``key`` and its attachments are unchanged
    (compared in constant time)."""
    if not all(a.content_matches() for a in workload.attachments):
        return False
    return hmac.compare_digest(sign(workload, key).encode(), workload.secret.encode("utf-8"))


def verify_raw(key: bytes, *, workload_id: str, workflow: Any,
               attachments: Iterable[Mapping[str, Any]], pinion: str, created_at: str,
               secret: str) -> bool:
    """:func:`verify` on a stored row as plain data (``created_at`` in the signed UTC form,
    attachments as their JSON dicts), without building a Workload."""
    import base64

    pairs = []
    for a in attachments:
        content = a["content"]
        data = content.encode("utf-8") if a["encoding"] == "text" else base64.b64decode(content)
        if hashlib.sha256(data).hexdigest() != a["sha256"]:
            return False
        pairs.append((a["path"], a["sha256"]))
    expected = hmac.new(key, _message(workload_id, workflow, pairs, pinion, created_at),
                        hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), secret.encode("utf-8", "replace"))
