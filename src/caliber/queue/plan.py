"""A workload's plan as a person gives it (``workflow queue --after ID --not-before WHEN
--priority N --notify URL``, ``Workflow.queue(after=..., ...)``), checked before anything is
queued: each bad value is a UsageError of one line naming it.

When it may start (:func:`parse_start`), one of:

- an ISO 8601 time with its offset: ``2026-12-08T22:00+01:00``, ``2026-12-08T21:00Z``;
- a clock time, local: ``22:00`` (or ``22:00:30``) is the next one, today when it is still
  ahead, else tomorrow;
- a time from now: ``+2h``, ``+30m``, ``+1h30m``, ``+1d``, ``+90s``.

An ISO time without an offset is refused: it would mean one instant here and another on a
pinion in another time zone. A time that has passed is taken as it is: the workload may
start at once (the command line says so).

No pydantic here (the queue API checks these before it builds the workload)."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from caliber.errors import UsageError

PRIORITY_MIN, PRIORITY_MAX = -1000, 1000
"""The priorities a workload may have (``--priority``): higher is claimed first."""
MAX_AFTER = 1000  # workloads one workload may run after
MAX_URL = 2048  # characters of a --notify address
MAX_AHEAD = dt.timedelta(days=3660)  # how far ahead a start time may be: about ten years

_CLOCK = re.compile(r"(\d{1,2}):(\d\d)(?::(\d\d))?")
_FROM_NOW = re.compile(r"\+(?:(\d{1,5})d)?(?:(\d{1,6})h)?(?:(\d{1,8})m)?(?:(\d{1,10})s)?")
_FORMS = "an ISO 8601 time with its offset (2026-12-08T22:00+01:00), a clock time (22:00) or " \
         "a time from now (+2h, +30m)"


def parse_start(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """The instant ``text`` names (see the module), in UTC; ``now`` (aware) for tests."""
    now = now if now is not None else dt.datetime.now(dt.UTC)
    given = text.strip()
    if not given:
        raise UsageError(f"no start time given: use {_FORMS}")
    if (clock := _CLOCK.fullmatch(given)) is not None:
        return _next_clock_time(given, clock, now)
    if given.startswith("+"):
        return _from_now(given, now)
    try:
        moment = dt.datetime.fromisoformat(given)
    except ValueError:
        raise UsageError(f"start time {text!r} is not a time: use {_FORMS}") from None
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(
            f"start time {text!r} has no UTC offset, so it is ambiguous (a pinion in another "
            f"time zone would read another instant): add one, as in {given}+01:00 or {given}Z,"
            " or give a clock time such as 22:00 (the next one, local time)")
    return check_start(moment, now)


def check_start(moment: dt.datetime, now: dt.datetime | None = None) -> dt.datetime:
    """``moment`` in UTC, when it has a time zone and is not too far ahead."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise UsageError(f"start time {moment.isoformat()} has no time zone, so it is "
                         "ambiguous: give an aware datetime (with tzinfo)")
    now = now if now is not None else dt.datetime.now(dt.UTC)
    try:
        utc = moment.astimezone(dt.UTC)
    except (OverflowError, ValueError):
        raise UsageError(f"start time {moment.isoformat()} is out of range") from None
    if utc > now + MAX_AHEAD:
        raise UsageError(f"start time {moment.isoformat()} is more than ten years ahead")
    return utc


def _next_clock_time(given: str, clock: re.Match[str], now: dt.datetime) -> dt.datetime:
    hour, minute, second = (int(part or 0) for part in clock.groups())
    if hour > 23 or minute > 59 or second > 59:
        raise UsageError(f"start time {given!r} is not a clock time (00:00 to 23:59)")
    wanted = dt.time(hour, minute, second)
    today = now.astimezone().date()  # the local date; the local zone's rules on each day
    for day in (today, today + dt.timedelta(days=1), today + dt.timedelta(days=2)):
        moment = dt.datetime.combine(day, wanted).astimezone()
        if moment >= now:
            return moment.astimezone(dt.UTC)
    raise AssertionError("unreachable: a clock time comes within two days")  # pragma: no cover


def _from_now(given: str, now: dt.datetime) -> dt.datetime:
    found = _FROM_NOW.fullmatch(given)
    if found is None or not any(found.groups()):
        raise UsageError(f"start time {given!r} is not a time from now: use a number and a "
                         "unit, as in +2h, +30m, +1h30m, +1d or +90s")
    days, hours, minutes, seconds = (int(part or 0) for part in found.groups())
    try:
        delta = dt.timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        delta = MAX_AHEAD * 2
    if delta > MAX_AHEAD:
        raise UsageError(f"start time {given!r} is more than ten years ahead")
    return now.astimezone(dt.UTC) + delta


def check_priority(priority: object) -> int:
    """``priority`` when it is a whole number from :data:`PRIORITY_MIN` to
    :data:`PRIORITY_MAX`."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise UsageError(f"priority {priority!r} is not a whole number")
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise UsageError(f"priority {priority} is out of range: use {PRIORITY_MIN} to "
                         f"{PRIORITY_MAX} (higher runs first; the default is 0)")
    return priority


def check_notify(url: object) -> str:
    """``url`` when it is an http:// or https:// address a pinion can post to."""
    if not isinstance(url, str):
        raise UsageError(f"notify address {url!r} is not text")
    if len(url) > MAX_URL:
        raise UsageError(f"notify address {url[:40]!r}... is longer than {MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise UsageError(f"notify address {url!r} has spaces or control characters in it")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port that is no number raises here
    except ValueError as exc:
        raise UsageError(f"notify address {url!r} is not an address ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"notify address {url!r} is not an http:// or https:// address")
    return url


def check_after(ids: str | Iterable[str]) -> list[str]:
    """The ids (or prefixes) to run after, each once, in the order given (a single id may be
    given alone)."""
    given = [ids] if isinstance(ids, str) else list(ids)
    for item in given:
        if not isinstance(item, str) or not item.strip():
            raise UsageError(f"{item!r} is not a workload id to run after")
    unique = list(dict.fromkeys(i.strip() for i in given))
    if len(unique) > MAX_AFTER:
        raise UsageError(f"a workload can run after at most {MAX_AFTER} others, not "
                         f"{len(unique)}")
    return unique


@dataclass(frozen=True)
class Plan:
    """A workload's plan, checked: what it runs after (ids or prefixes, as given: the queue
    API resolves them in the queue), when it may start (UTC), its priority and where its
    outcome is posted."""

    after: tuple[str, ...] = ()
    not_before: dt.datetime | None = None
    priority: int = 0
    notify: str | None = None

    @classmethod
    def checked(cls, *, after: str | Iterable[str] = (),
                not_before: dt.datetime | str | None = None, priority: int = 0,
                notify: str | None = None, now: dt.datetime | None = None) -> Plan:
        """Each value checked (UsageError naming the first bad one); ``not_before`` an aware
        datetime or text as :func:`parse_start` reads it."""
        if isinstance(not_before, str):
            start: dt.datetime | None = parse_start(not_before, now)
        elif isinstance(not_before, dt.datetime):
            start = check_start(not_before, now)
        elif not_before is None:
            start = None
        else:
            raise UsageError(f"start time {not_before!r} is neither a datetime nor text")
        return cls(after=tuple(check_after(after)), not_before=start,
                   priority=check_priority(priority),
                   notify=None if notify is None else check_notify(notify))
