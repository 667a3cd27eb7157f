"""The run-secret: the key (file or environment), signing and constant-time verification."""

from __future__ import annotations

import datetime as dt
import os
import stat
import sys
import threading
from pathlib import Path

import pytest

from caliber.errors import SecretKeyError
from caliber.queue import secret
from caliber.queue.workload import Attachment, Workload

posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX permissions")


def workload() -> Workload:
    return Workload(
        id="abcdefghjk",
        pinion="p1",
        workflow={"caliber": 1, "name": "pasta", "process": {"type": "process", "tasks": [
            {"type": "task", "name": "a", "function": "m:f", "args": [3, 0.5], "kwargs": {}}]}},
        attachments=[Attachment.from_bytes("m.py", b"def f(x): return x\n"),
                     Attachment.from_bytes("data/blob.bin", bytes(range(256)))],
        created_at=dt.datetime(2030, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC),
        queued_by="ann@laptop",
    )


@posix_only
def test_key_file_is_created_once_with_0600(caliber_home: Path) -> None:
    key = secret.load_key()
    path = caliber_home / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(key) >= secret.MIN_KEY_LENGTH
    assert secret.load_key() == key
    assert not [p for p in caliber_home.iterdir() if p.name.endswith(".tmp")]


def test_concurrent_first_use_agrees_on_one_key() -> None:
    keys: list[bytes] = []
    threads = [threading.Thread(target=lambda: keys.append(secret.load_key())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(keys)) == 1 and len(keys) == 8


def test_environment_key_wins(monkeypatch: pytest.MonkeyPatch, caliber_home: Path) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", "  correct horse battery staple \n")
    assert secret.load_key() == b"correct horse battery staple"
    assert not (caliber_home / "secret.key").exists()


def test_short_environment_key_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALIBER_SECRET_KEY", "short")
    with pytest.raises(SecretKeyError, match="too short"):
        secret.load_key()


@posix_only
def test_key_file_readable_by_others_is_refused(caliber_home: Path) -> None:
    secret.load_key()
    path = caliber_home / "secret.key"
    os.chmod(path, 0o644)
    with pytest.raises(SecretKeyError, match="chmod 600"):
        secret.load_key()


@posix_only
def test_empty_key_file_is_refused(caliber_home: Path) -> None:
    caliber_home.mkdir(parents=True)
    path = caliber_home / "secret.key"
    path.write_text("")
    os.chmod(path, 0o600)
    with pytest.raises(SecretKeyError, match="too short"):
        secret.load_key()


def test_sign_and_verify() -> None:
    w = workload()
    w.secret = secret.sign(w, b"k" * 32)
    assert len(w.secret) == 64
    assert secret.verify(w, b"k" * 32)
    assert not secret.verify(w, b"j" * 32)


@pytest.mark.parametrize("change", [
    lambda w: setattr(w, "id", "abcdefghjm"),
    lambda w: setattr(w, "pinion", "p2"),
    lambda w: setattr(w, "created_at", w.created_at + dt.timedelta(microseconds=1)),
    lambda w: w.workflow["process"]["tasks"][0]["args"].__setitem__(0, 4),
    lambda w: w.workflow["process"]["tasks"][0].__setitem__("function", "evil:f"),
    lambda w: w.workflow.__setitem__("name", "other"),
    lambda w: w.attachments.pop(),
    lambda w: setattr(w.attachments[0], "path", "n.py"),
    lambda w: w.attachments.append(Attachment.from_bytes("x.py", b"import os")),
    lambda w: setattr(w, "after", ["abcdefghjm"]),
    lambda w: setattr(w, "not_before", w.created_at + dt.timedelta(hours=1)),
    lambda w: setattr(w, "priority", 9),
    lambda w: setattr(w, "notify", "http://127.0.0.1:1/steal"),
])
def test_anything_that_decides_what_runs_is_signed(change: object) -> None:
    key = b"k" * 32
    w = workload()
    w.secret = secret.sign(w, key)
    change(w)  # type: ignore[operator]
    assert not secret.verify(w, key)


def test_attachment_content_is_checked_against_its_hash() -> None:
    key = b"k" * 32
    w = workload()
    w.secret = secret.sign(w, key)
    w.attachments[0].content = "import os; os.system('rm -rf ~')\n"
    assert not secret.verify(w, key)


def test_a_signed_plan_is_checked_as_a_whole() -> None:
    """after / not_before / priority / notify are signed once set: changing or dropping one
    fails; a workload without them signs what it always did (old run-secrets stay valid)."""
    key = b"k" * 32
    w = workload()
    plain = secret.sign(w, key)
    w.after, w.priority, w.notify = ["abcdefghjm"], 2, "http://127.0.0.1:1/hook"
    w.not_before = w.created_at + dt.timedelta(hours=8)
    w.secret = secret.sign(w, key)
    assert w.secret != plain and secret.verify(w, key)
    for name, default in (("after", []), ("priority", 0), ("notify", None),
                          ("not_before", None)):
        changed = w.model_copy(update={name: default})
        assert not secret.verify(changed, key)
    bare = w.model_copy(update={"after": [], "priority": 0, "notify": None,
                                "not_before": None, "secret": plain})
    assert secret.verify(bare, key)


def test_what_does_not_decide_what_runs_is_not_signed() -> None:
    key = b"k" * 32
    w = workload()
    w.secret = secret.sign(w, key)
    w.attempts, w.queued_by, w.last_error = 3, "someone@else", "x"
    assert secret.verify(w, key)


def test_same_moment_in_another_time_zone_signs_the_same() -> None:
    key = b"k" * 32
    w = workload()
    other = w.model_copy(update={
        "created_at": w.created_at.astimezone(dt.timezone(dt.timedelta(hours=2)))})
    assert secret.sign(w, key) == secret.sign(other, key)


def test_garbage_secret_never_crashes_verify() -> None:
    w = workload()
    for junk in ("", "zz", "é" * 64, "0" * 1000):
        w.secret = junk
        assert not secret.verify(w, b"k" * 32)


def test_key_id_is_a_fingerprint_not_the_key() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    kid = secret.key_id(key)
    assert len(kid) == 16 and kid not in key.decode()
    assert secret.key_id(key) == kid != secret.key_id(b"x" * 32)
