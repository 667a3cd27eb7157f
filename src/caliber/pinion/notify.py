"""Being told when a workload has ended: a JSON POST to ``CALIBER_NOTIFY_URL`` (a body a Slack
or Teams incoming webhook takes: ``text`` is the line a person reads, ``caliber`` the fields a
program reads) and an e-mail through the SMTP server of ``CALIBER_NOTIFY_SMTP`` to
``CALIBER_NOTIFY_EMAIL``; and the same POST to a workload's own address (``workflow queue
--notify URL``, :attr:`~caliber.queue.workload.Workload.notify`), only when its run-secret
checks with the pinion's key (the address is signed: a queue writer without the key never
chooses where a workload's error text goes) and only to an http(s) address
(:func:`workload_address`).

The pinion hands each ended workload's event to a :class:`Notifier` and goes on: one thread
sends them in order, trying each channel up to :data:`TRIES` times with back-off
(:data:`BACKOFF`), and a channel that stays down costs one log line per event, never the
workload's own outcome (stored before the event is made). When the pinion stops, it gives the
sender :data:`DRAIN` seconds to finish, then says how many events were not delivered.

The pinion's side only: a workload's child never imports this (threading)."""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import re
import smtplib
import ssl
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from caliber.errors import ConfigError

if TYPE_CHECKING:
    from caliber.queue.workload import Workload

log = logging.getLogger(__name__)

TRIES = 5
BACKOFF = (1.0, 2.0, 4.0, 8.0)
"""Seconds before the 2nd, 3rd, ... try of a channel."""
TIMEOUT = 10.0
"""Seconds one POST or SMTP conversation may take."""
DRAIN = 15.0
"""Seconds a stopping pinion waits for events still being sent."""
EXPIRED = re.compile(r"lease ran out \d+ times\b")
"""The start of the error of a workload failed by ``expire`` (every backend writes it so)."""


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes} min {int(seconds % 60)} s"
    return f"{minutes // 60} h {minutes % 60} min"


def event(*, workload_id: str, workflow: str, pinion: str, status: str,
          results_id: str | None, error: str | None, queued_at: dt.datetime,
          started_at: dt.datetime | None, ended_at: dt.datetime) -> dict[str, Any]:
    """The body of one notification: ``text`` for people (and webhooks), ``caliber`` for
    programs."""
    if started_at is None:  # cancelled while queued or waiting (by a person or down a
        where = f"before it ran (queued for pinion {pinion})"  # chain): it never ran
    elif status == "failed" and not results_id and EXPIRED.match(error or ""):
        # failed by expire: the time to its end is not a run's, the lease ran out meanwhile
        where = f"on pinion {pinion}, which stopped answering while it ran"
    else:
        where = f"on pinion {pinion} in {_duration((ended_at - started_at).total_seconds())}"
    text = f"Caliber: {workflow} ({workload_id}) {status} {where}"
    text += f"; results {results_id}" if results_id else ""
    text += f": {error}" if error and status != "completed" else ""
    return {"text": text, "caliber": {
        "event": "workload ended", "id": workload_id, "workflow": workflow, "pinion": pinion,
        "status": status, "results_id": results_id, "error": error,
        "queued_at": queued_at.isoformat(),
        "started_at": started_at.isoformat() if started_at else None,
        "ended_at": ended_at.isoformat()}}


ENDED = ("completed", "failed", "cancelled")
"""The statuses a workload ends in: each end is one event."""


def ended_event(workload: Workload) -> dict[str, Any] | None:
    """The event of a workload as it ended (:func:`event`: its last run's start, the time of
    its last status), or None when it has not ended. What the pinion sends and the dashboard
    shows."""
    if workload.status.value not in ENDED:
        return None
    started = next((h.at for h in reversed(workload.history)
                    if h.status is not None and h.status.value == "running"), None)
    ended = workload.history[-1].at if workload.history else dt.datetime.now(dt.UTC)
    return event(
        workload_id=workload.id, workflow=workload.workflow_name, pinion=workload.pinion,
        status=workload.status.value, results_id=workload.results_id,
        error=workload.last_error, queued_at=workload.created_at, started_at=started,
        ended_at=ended)


@dataclass(frozen=True)
class Smtp:
    """``smtp://[user[:password]@]host[:port]`` (STARTTLS when the server offers it) or
    ``smtps://...`` (TLS from the start)."""

    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> Smtp:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps") or not parts.hostname:
            raise ConfigError("CALIBER_NOTIFY_SMTP must be smtp://[user[:password]@]host[:port] "
                              "or smtps://..., got a value that is not")
        try:
            port = parts.port or (465 if parts.scheme == "smtps" else 25)
        except ValueError:
            raise ConfigError("CALIBER_NOTIFY_SMTP: the port is not a number") from None
        return cls(parts.hostname, port, parts.scheme == "smtps",
                   unquote(parts.username) if parts.username else None,
                   unquote(parts.password) if parts.password else None)


def check_url(url: str) -> str:
    """``url`` when it is an http(s) address (ConfigError naming the setting otherwise)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"CALIBER_NOTIFY_URL must be an http:// or https:// address, got "
                          f"{url!r}")
    return url


def workload_address(url: str | None) -> str | None:
    """A workload's own notification address when it is one the pinion posts to (http or
    https, with a host), else None (and a log line: the workload still runs)."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.scheme in ("http", "https") and parts.hostname:
        return url
    log.warning("a workload's notify address is not an http:// or https:// address: "
                "not posted to")
    return None


def _host(url: str) -> str:
    """Where an address points, for a log line (a webhook's path is its secret)."""
    return urlsplit(url).hostname or "?"


class Notifier:
    """Sends events on a thread of its own; :meth:`send` never blocks. With no channel of
    the settings (``Notifier()``) it sends only to the addresses :meth:`send` is given."""

    def __init__(self, url: str | None = None, smtp: Smtp | None = None,
                 to: list[str] | None = None, sender: str | None = None) -> None:
        self.url = url
        self.smtp = smtp
        self.to = to or []
        self.sender = sender
        self.failed = 0
        self._events: queue.Queue[tuple[dict[str, Any], tuple[str, ...]] | None] = (
            queue.Queue())
        self._thread = threading.Thread(target=self._run, name="caliber-notify", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls) -> Notifier | None:
        """The notifier the settings ask for, or None (no channel set)."""
        import socket

        from caliber.settings import load_settings

        settings = load_settings()
        url = settings.notify_url
        smtp = settings.notify_smtp.get_secret_value() if settings.notify_smtp else None
        to = [a.strip() for a in (settings.notify_email or "").split(",") if a.strip()]
        if smtp and not to:
            raise ConfigError("CALIBER_NOTIFY_SMTP is set but CALIBER_NOTIFY_EMAIL (whom to "
                              "write to) is not")
        if not url and not smtp:
            return None
        return cls(check_url(url) if url else None, Smtp.parse(smtp) if smtp else None, to,
                   settings.notify_email_from or f"caliber@{socket.getfqdn()}")

    def send(self, body: dict[str, Any], also: Sequence[str] = ()) -> None:
        """Send ``body`` through the settings' channels, and POST it to each address of
        ``also`` (a workload's own, checked: :func:`workload_address`) that is not the
        settings' URL."""
        self._events.put((body, tuple(dict.fromkeys(u for u in also if u != self.url))))

    def close(self, wait: float = DRAIN) -> None:
        """Let the sender finish what it has (at most ``wait`` seconds), then stop it."""
        self._events.put(None)
        self._thread.join(wait)
        left = self._events.qsize() - 1 + (1 if self._thread.is_alive() else 0)
        if left > 0:
            log.warning("%d notification(s) not sent: the pinion stopped first", left)

    def _run(self) -> None:
        while (item := self._events.get()) is not None:
            body, also = item
            if self.url:
                self._try("POST to CALIBER_NOTIFY_URL",
                          lambda b=body, u=self.url: self._post(u, b))
            if self.smtp:
                self._try("e-mail through CALIBER_NOTIFY_SMTP", lambda b=body: self._mail(b))
            for url in also:
                self._try(f"POST to the workload's notify address on {_host(url)}",
                          lambda b=body, u=url: self._post(u, b))

    def _try(self, what: str, attempt: Any) -> None:
        for n in range(TRIES):
            try:
                attempt()
                return
            except Exception as exc:  # any failure of the channel: try again, then say so
                if n == TRIES - 1:
                    self.failed += 1
                    log.warning("notification not sent (%s, %d tries): %s", what, TRIES, exc)
                    return
                time.sleep(BACKOFF[min(n, len(BACKOFF) - 1)])

    @staticmethod
    def _post(url: str, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            url, data=json.dumps(body).encode(), method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "caliber"})
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            answer.read()

    def _mail(self, body: dict[str, Any]) -> None:
        smtp = self.smtp
        assert smtp is not None and self.sender is not None
        fields = body["caliber"]
        message = EmailMessage()
        message["Subject"] = (f"Caliber: {fields['workflow']} {fields['status']} "
                              f"({fields['id']})")
        message["From"] = self.sender
        message["To"] = ", ".join(self.to)
        message.set_content(body["text"] + "\n\n" + json.dumps(fields, indent=2) + "\n")
        context = ssl.create_default_context()
        client: smtplib.SMTP = (smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=TIMEOUT,
                                                 context=context) if smtp.tls
                                else smtplib.SMTP(smtp.host, smtp.port, timeout=TIMEOUT))
        with client:
            if not smtp.tls:
                client.ehlo()
                if client.has_extn("starttls"):
                    client.starttls(context=context)
                    client.ehlo()
            if smtp.user:
                client.login(smtp.user, smtp.password or "")
            client.send_message(message)
