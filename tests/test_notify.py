"""Notifications when a workload ends: a JSON POST a webhook takes and an e-mail, sent on a
thread of their own, retried with back-off, never blocking (real local HTTP and SMTP servers)."""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from caliber.errors import ConfigError
from caliber.pinion import notify
from caliber.pinion.notify import Notifier, Smtp, event
from tests.pinion_helpers import BLOCKING, make_folder, queue, status_of

T0 = dt.datetime(2026, 12, 6, 22, 0, tzinfo=dt.UTC)


def sample(status: str = "failed") -> dict[str, Any]:
    return event(workload_id="k3v9q2mxa7", workflow="analysis", pinion="night", status=status,
                 results_id="7hq2x", error="task 'solve': ValueError: diverged",
                 queued_at=T0, started_at=T0 + dt.timedelta(seconds=5),
                 ended_at=T0 + dt.timedelta(minutes=3, seconds=5))


class Hook:
    """A local HTTP server that records each POST and answers ``codes`` in turn, then 200."""

    def __init__(self, codes: list[int] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.codes = list(codes or [])
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                body = json.loads(self.rfile.read(length))
                code = hook.codes.pop(0) if hook.codes else 200
                if code == 200:
                    hook.bodies.append(body)
                self.send_response(code)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.close()


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(notify, "BACKOFF", (0.01,))
    monkeypatch.setattr(notify, "TIMEOUT", 2.0)


def test_the_body_reads_as_a_line_and_as_fields() -> None:
    body = sample()
    assert body["text"] == ("Caliber: analysis (k3v9q2mxa7) failed on pinion night in "
                            "3 min 0 s; results 7hq2x: task 'solve': ValueError: diverged")
    assert body["caliber"]["status"] == "failed"
    assert body["caliber"]["ended_at"] == "2026-12-06T22:03:05+00:00"
    assert "ValueError" not in sample("completed")["text"]


def test_a_workload_that_never_ran_says_so() -> None:
    """Cancelled while it waited (the dashboard's ended list shows such ones): no pinion ran
    it, so the line names none as if it had."""
    body = event(workload_id="k3v9q2mxa7", workflow="post", pinion="night",
                 status="cancelled", results_id=None,
                 error="upstream s35p4cmdpm was cancelled", queued_at=T0, started_at=None,
                 ended_at=T0 + dt.timedelta(hours=1))
    assert body["text"] == ("Caliber: post (k3v9q2mxa7) cancelled before it ran (queued for "
                            "pinion night): upstream s35p4cmdpm was cancelled")


def test_a_post_per_event_in_order(hook: Hook) -> None:
    sender = Notifier(url=hook.url)
    sender.send(sample("completed"))
    sender.send(sample("failed"))
    sender.close()
    assert [b["caliber"]["status"] for b in hook.bodies] == ["completed", "failed"]
    assert sender.failed == 0


def test_a_hook_that_fails_is_tried_again() -> None:
    flaky = Hook([500, 503])
    try:
        sender = Notifier(url=flaky.url)
        sender.send(sample())
        sender.close()
        assert len(flaky.bodies) == 1 and sender.failed == 0
    finally:
        flaky.close()


def test_a_hook_that_is_down_costs_a_line_not_the_pinion(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sender = Notifier(url=f"http://127.0.0.1:{port}/")
    sender.send(sample())  # returns at once
    sender.close()
    assert sender.failed == 1
    assert any("notification not sent" in r.getMessage() for r in caplog.records)


def test_an_email_through_a_local_smtp_server() -> None:
    pytest.importorskip("aiosmtpd")
    from aiosmtpd.controller import Controller

    received: list[Any] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            received.append(envelope)
            return "250 OK"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    controller = Controller(Handler(), hostname="127.0.0.1", port=port)
    controller.start()
    try:
        sender = Notifier(smtp=Smtp.parse(f"smtp://127.0.0.1:{port}"),
                          to=["ann@example.org"], sender="caliber@example.org")
        sender.send(sample())
        sender.close()
    finally:
        controller.stop()
    assert sender.failed == 0
    (mail,) = received
    assert mail.rcpt_tos == ["ann@example.org"]
    text = mail.content.decode()
    assert "Subject: Caliber: analysis failed (k3v9q2mxa7)" in text
    assert "ValueError: diverged" in text


@pytest.mark.parametrize("value", ["mail.example.org", "http://x", "smtp://"])
def test_a_bad_smtp_address_names_the_setting(value: str) -> None:
    with pytest.raises(ConfigError, match="CALIBER_NOTIFY_SMTP"):
        Smtp.parse(value)


def test_settings_make_the_notifier(monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    assert Notifier.from_settings() is None
    monkeypatch.setenv("CALIBER_NOTIFY_URL", "ftp://x")
    with pytest.raises(ConfigError, match="CALIBER_NOTIFY_URL"):
        Notifier.from_settings()
    monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
    monkeypatch.setenv("CALIBER_NOTIFY_SMTP", "smtp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="CALIBER_NOTIFY_EMAIL"):
        Notifier.from_settings()
    monkeypatch.delenv("CALIBER_NOTIFY_SMTP")
    made = Notifier.from_settings()
    assert made is not None and made.url == hook.url
    made.close()


def test_a_pinion_posts_one_event_per_ended_workload(hook: Hook, tmp_path: Any) -> None:
    folder = make_folder(tmp_path / "wf")
    good = queue(folder, [("add", [1, 2])], name="analysis", pinion="night")
    bad = queue(folder, [("boom", [])], name="post", pinion="night")
    done = subprocess.run(
        [sys.executable, "-m", "caliber", "pinion", "init", "night", "-a", "1", "-w", "0"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CALIBER_NOTIFY_URL": hook.url})
    assert done.returncode == 0, done.stderr
    ended = {b["caliber"]["id"]: b for b in hook.bodies}
    assert set(ended) == {good, bad} and len(hook.bodies) == 2
    assert ended[good]["caliber"]["status"] == "completed"
    assert ended[good]["caliber"]["results_id"] is not None
    assert ended[bad]["caliber"]["status"] == "failed"
    assert "burnt" in ended[bad]["text"]
    assert ended[bad]["caliber"]["started_at"] <= ended[bad]["caliber"]["ended_at"]


def test_a_bad_notify_setting_stops_the_pinion_before_it_runs(tmp_path: Any) -> None:
    folder = make_folder(tmp_path / "wf")
    workload = queue(folder, [("add", [1, 2])], name="analysis", pinion="night")
    done = subprocess.run(
        [sys.executable, "-m", "caliber", "pinion", "init", "night", "-a", "1", "-w", "0"],
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "CALIBER_NOTIFY_URL": "mail.example.org"})
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "caliber: error: CALIBER_NOTIFY_URL must be an http:// or https:// address, got "
        "'mail.example.org'"]
    assert status_of(workload) == "queued"


# --- a workload's own address (workflow queue --notify), on an in-memory queue --------------

@pytest.fixture
def memory() -> Iterator[Any]:
    from caliber.queue.memory.backend import MemoryBackend, forget

    with MemoryBackend("notify-tests") as made:
        yield made
    forget("notify-tests")


def put(backend: Any, folder: Any, tasks: list[tuple[str, list[Any]]], notify: str | None,
        *, signed: bool = True) -> str:
    """A workload for pinion 'night' with its own address ``notify``: signed with it, or
    (``signed=False``) changed after it was signed without it."""
    from caliber.queue.api import make_workload
    from caliber.queue.secret import load_key, sign
    from tests.pinion_helpers import workflow

    workload = make_workload(workflow(folder, tasks, name="analysis"), "night", backend)
    workload.notify = notify
    if signed:
        workload.secret = sign(workload, load_key())
    backend.put(workload)
    return workload.id


def drain(backend: Any) -> Any:
    from caliber.pinion.loop import Pinion, PinionConfig

    return Pinion(PinionConfig(name="night", attempts=1, wait=0), backend).run()


def test_a_workload_is_told_to_its_own_address_besides_the_settings(
        memory: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    own = Hook()
    try:
        monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
        folder = make_folder(tmp_path / "wf", source=BLOCKING)
        mine = put(memory, folder, [("add", [1])], own.url)
        same = put(memory, folder, [("add", [2])], hook.url)  # the settings' URL: told once
        plain = put(memory, folder, [("add", [3])], None)
        assert drain(memory).completed == 3
        assert sorted(b["caliber"]["id"] for b in hook.bodies) == sorted([mine, same, plain])
        assert [b["caliber"]["id"] for b in own.bodies] == [mine]
        assert own.bodies[0] == next(b for b in hook.bodies if b["caliber"]["id"] == mine)
    finally:
        own.close()


def test_its_own_address_without_any_notify_setting(memory: Any, tmp_path: Any,
                                                    hook: Hook) -> None:
    folder = make_folder(tmp_path / "wf", source=BLOCKING)
    failed = put(memory, folder, [("add", ["x"])], hook.url)
    assert drain(memory).failed == 1
    (body,) = hook.bodies
    assert body["caliber"]["id"] == failed and body["caliber"]["status"] == "failed"
    assert "TypeError" in body["text"]


def test_an_address_changed_in_the_queue_without_the_key_is_never_posted_to(
        memory: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch, hook: Hook) -> None:
    """Changed before the claim: the workload does not run (its run-secret does not check);
    changed while it runs: it ends, the settings' hook is told, the new address is not."""
    from caliber.queue.workload import WorkloadStatus
    from tests.pinion_helpers import wait_for

    theirs, mine = Hook(), Hook()
    try:
        monkeypatch.setenv("CALIBER_NOTIFY_URL", hook.url)
        folder = make_folder(tmp_path / "wf", source=BLOCKING)
        before = put(memory, folder, [("add", [1])], theirs.url, signed=False)
        release = tmp_path / "release"
        during = put(memory, folder, [("until", [str(release)])], mine.url)

        def change_while_it_runs() -> None:
            wait_for(lambda: memory.get(during).status == WorkloadStatus.RUNNING,
                     what="the workload to run")
            with memory.space.lock:  # as a writer of the queue without the key would
                memory.space.entries[during].workload.notify = theirs.url
            release.touch()

        changer = threading.Thread(target=change_while_it_runs, daemon=True)
        changer.start()
        try:
            summary = drain(memory)
        finally:
            release.touch()
            changer.join(30)
        assert [i for i, _ in summary.skipped] == [before]
        assert summary.completed == 1
        assert memory.get(during).notify == theirs.url
        assert theirs.bodies == [] and mine.bodies == []
        assert [b["caliber"]["id"] for b in hook.bodies] == [during]
    finally:
        theirs.close()
        mine.close()


@pytest.mark.parametrize("address", ["file:///etc/passwd", "ftp://127.0.0.1/x", "http://"])
def test_only_an_http_address_of_a_workload_is_posted_to(
        memory: Any, tmp_path: Any, address: str, caplog: pytest.LogCaptureFixture) -> None:
    folder = make_folder(tmp_path / "wf", source=BLOCKING)
    put(memory, folder, [("add", [1])], address)
    assert drain(memory).completed == 1
    assert any("not an http:// or https:// address" in r.getMessage() for r in caplog.records)
