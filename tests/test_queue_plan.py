"""A workload's plan as a person gives it (``workflow queue --after --not-before --priority
--notify``, ``Workflow.queue(...)``): the start-time forms, the bounds, the one-line
refusals (caliber.queue.plan)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator

import pytest

from caliber.errors import UsageError
from caliber.queue.plan import (
    Plan,
    check_after,
    check_notify,
    check_priority,
    parse_start,
)

UTC = dt.UTC


@pytest.fixture
def amsterdam(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The local time zone is Europe/Amsterdam (CET, CEST from the last Sunday of March)."""
    monkeypatch.setenv("TZ", "Europe/Amsterdam")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def test_iso_with_an_offset_is_that_instant_in_utc() -> None:
    now = at("2026-12-07T10:00:00+00:00")
    assert parse_start("2026-12-08T22:00+01:00", now) == at("2026-12-08T21:00:00+00:00")
    assert parse_start("2026-12-08T21:00Z", now) == at("2026-12-08T21:00:00+00:00")
    assert parse_start(" 2026-12-08 21:00:30+00:00 ", now) == at("2026-12-08T21:00:30+00:00")
    assert parse_start("2026-12-08T22:00+01:00", now).tzinfo == UTC


@pytest.mark.parametrize("text", ["2026-12-08T22:00", "2026-12-08", "2026-12-08 22:00:00"])
def test_iso_without_an_offset_is_refused_as_ambiguous(text: str) -> None:
    with pytest.raises(UsageError, match="no UTC offset, so it is ambiguous") as caught:
        parse_start(text)
    assert "\n" not in str(caught.value) and f"{text}+01:00" in str(caught.value)


@pytest.mark.usefixtures("amsterdam")
def test_a_clock_time_is_the_next_one_local() -> None:
    morning = at("2026-12-07T09:00:00+01:00")
    assert parse_start("22:00", morning) == at("2026-12-07T21:00:00+00:00")  # today
    night = at("2026-12-07T23:30:00+01:00")
    assert parse_start("22:00", night) == at("2026-12-08T21:00:00+00:00")  # tomorrow
    just_past = at("2026-12-07T22:00:01+01:00")
    assert parse_start("22:00", just_past) == at("2026-12-08T21:00:00+00:00")
    assert parse_start("7:05:30", morning) == at("2026-12-08T06:05:30+00:00")
    assert parse_start("22:00", at("2026-12-07T22:00:00+01:00")) == at(
        "2026-12-07T21:00:00+00:00")  # the very instant: now, not tomorrow


@pytest.mark.usefixtures("amsterdam")
def test_a_clock_time_tomorrow_takes_tomorrows_offset() -> None:
    # Saturday 28 March 2026, 23:00 CET; Sunday is summer time (CEST, +02:00).
    saturday_night = at("2026-03-28T23:00:00+01:00")
    assert parse_start("22:00", saturday_night) == at("2026-03-29T20:00:00+00:00")
    assert parse_start("01:00", saturday_night) == at("2026-03-29T00:00:00+00:00")


def test_a_time_from_now() -> None:
    now = at("2026-12-07T10:00:00+00:00")
    assert parse_start("+2h", now) == now + dt.timedelta(hours=2)
    assert parse_start("+30m", now) == now + dt.timedelta(minutes=30)
    assert parse_start("+1h30m", now) == now + dt.timedelta(minutes=90)
    assert parse_start("+1d", now) == now + dt.timedelta(days=1)
    assert parse_start("+90s", now) == now + dt.timedelta(seconds=90)


@pytest.mark.parametrize("text, why", [
    ("", "no start time given"),
    ("tonight", "is not a time"),
    ("25:00", "is not a clock time"),
    ("12:60", "is not a clock time"),
    ("+", "is not a time from now"),
    ("+2", "is not a time from now"),
    ("+2x", "is not a time from now"),
    ("+30m2h", "is not a time from now"),
    ("+99999d", "more than ten years ahead"),
    ("+9999999999s", "more than ten years ahead"),
    ("9999-12-31T23:59:59+00:00", "more than ten years ahead"),
    ("0001-01-01T00:00:00+01:00", "is out of range"),
])
def test_what_is_not_a_start_time_is_one_line(text: str, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        parse_start(text, at("2026-12-07T10:00:00+00:00"))
    assert "\n" not in str(caught.value)


def test_a_time_that_has_passed_is_taken() -> None:
    now = at("2026-12-07T10:00:00+00:00")
    assert parse_start("2026-12-07T09:00:00+00:00", now) == at("2026-12-07T09:00:00+00:00")


def test_priority_bounds() -> None:
    assert check_priority(-1000) == -1000 and check_priority(1000) == 1000
    for bad in (1001, -1001, 10**30):
        with pytest.raises(UsageError, match="out of range: use -1000 to 1000"):
            check_priority(bad)
    for bad in (True, 1.5, "5", None):
        with pytest.raises(UsageError, match="is not a whole number"):
            check_priority(bad)


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080/hook", "https://hooks.lan/T0/B0/x?y=1"])
def test_an_http_notify_address_is_taken(url: str) -> None:
    assert check_notify(url) == url


@pytest.mark.parametrize("url, why", [
    ("ftp://hooks.lan/x", "is not an http:// or https:// address"),
    ("hooks.lan/x", "is not an http:// or https:// address"),
    ("http://", "is not an http:// or https:// address"),
    ("file:///etc/passwd", "is not an http:// or https:// address"),
    ("http://h:port/x", "is not an address"),
    ("http://h/a b", "spaces or control characters"),
    ("http://h/\x1b[31m", "spaces or control characters"),
    ("http://h/" + "x" * 3000, "longer than 2048 characters"),
    (5, "is not text"),
])
def test_a_bad_notify_address_is_one_line(url: object, why: str) -> None:
    with pytest.raises(UsageError, match=why) as caught:
        check_notify(url)
    assert "\n" not in str(caught.value)


def test_after_ids_once_each_in_order() -> None:
    assert check_after(["b", "a", "b"]) == ["b", "a"]
    assert check_after("k3v9") == ["k3v9"]  # one id alone is one id, not its letters
    for bad in ([""], [" "], [5]):
        with pytest.raises(UsageError, match="is not a workload id to run after"):
            check_after(bad)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="at most 1000 others"):
        check_after([str(i) for i in range(1001)])


def test_a_plan_from_python_values() -> None:
    start = dt.datetime(2030, 1, 2, 3, 4, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    plan = Plan.checked(after=("a",), not_before=start, priority=3, notify="http://h/x")
    assert plan == Plan(("a",), start.astimezone(UTC), 3, "http://h/x")
    assert plan.not_before is not None and plan.not_before.tzinfo == UTC
    with pytest.raises(UsageError, match="has no time zone"):
        Plan.checked(not_before=dt.datetime(2030, 1, 2, 3, 4))
    with pytest.raises(UsageError, match="neither a datetime nor text"):
        Plan.checked(not_before=1234)  # type: ignore[arg-type]
    assert Plan.checked() == Plan()
