"""Every number setting has bounds, and so has the command-line option that is its twin (the
same bounds, the same words): a value outside them, nan, inf or one that would overflow a date
(``--lease 1e17``) is one line naming the variable or the option, exit 2, and the queue is left
as it was. ``CALIBER_CHILD_START`` is fork or spawn."""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
import pytest

from caliber.errors import ConfigError
from caliber.settings import BOUNDS, Bounds, load_settings
from caliber.settings_model import Settings
from tests.test_queue_api import make_workflow

SIZES = {"pinion_log_max",  # sizes in bytes, with suffixes: tests/test_output_log.py
         "output_max", "output_total_max"}  # and tests/test_result_files.py
NUMBERS = [name for name, info in Settings.model_fields.items()
           if info.annotation in (int, float, int | None, float | None) and name not in SIZES]


def outside(bounds: Bounds) -> list[str]:
    """Values each number setting must refuse."""
    below = bounds.low if bounds.above else bounds.low - (1 if bounds.whole else 0.05)
    return [repr(below), repr(bounds.high * 2), "1e17", "nan", "inf", "-inf", "soon",
            *(["1.5"] if bounds.whole else [])]


def test_every_number_setting_has_bounds() -> None:
    assert NUMBERS and set(NUMBERS) == set(BOUNDS)
    latest = dt.datetime.max.replace(tzinfo=dt.UTC) - dt.timedelta(days=365 * 1000)
    for bounds in BOUNDS.values():  # now + the largest value is a date for a long time yet
        assert dt.datetime.now(dt.UTC) + dt.timedelta(seconds=bounds.high) < latest


@pytest.mark.parametrize("field", NUMBERS)
def test_values_outside_the_bounds_are_refused_naming_the_variable(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    variable = Settings.variable(field)
    bounds = BOUNDS[field]
    for raw in outside(bounds):
        monkeypatch.setenv(variable, raw)
        with pytest.raises(ConfigError) as caught:
            load_settings()
        assert str(caught.value) == f"{variable} must be {bounds.describe()}, got {raw!r}"
    for good in (bounds.high, bounds.low + (1 if bounds.whole else 0.5)):
        monkeypatch.setenv(variable, str(good))
        assert getattr(load_settings(), field) == good


def pinion_options() -> dict[str, click.Parameter]:
    from caliber.cli.pinion import init

    return {str(p.envvar).removeprefix("CALIBER_").lower(): p for p in init.params
            if p.envvar}


def test_each_pinion_option_has_the_bounds_of_its_setting() -> None:
    options = pinion_options()
    numbers = [name for name in NUMBERS if name.startswith("pinion_")]
    assert set(numbers) <= set(options)
    for name in numbers:
        assert getattr(options[name].type, "bounds", None) == BOUNDS[name], name


@pytest.fixture
def queued(tmp_path: Path) -> str:
    return make_workflow(tmp_path / "wf").queue(pinion="p")


def queue_state(caliber_home: Path) -> bytes:
    return (caliber_home / "caliber.db").read_bytes()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "caliber", *args], capture_output=True,
                          text=True, timeout=60, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("field", NUMBERS)
def test_a_bad_number_in_the_environment_stops_the_command(
    field: str, queued: str, caliber_home: Path
) -> None:
    """One line naming the variable, exit 2, the queue untouched (the pinion ran nothing)."""
    variable = Settings.variable(field)
    raw = "1e17"
    env = {"CALIBER_PINION_ATTEMPTS": "1", "CALIBER_PINION_WAIT": "0", variable: raw}
    if field.startswith("pinion_"):
        args = ["pinion", "init", "p"]
    else:
        env["CALIBER_SPECKLE_HOST"] = "http://127.0.0.1:9"
        args = ["queue", "list", "--project", "abc"]
    before = queue_state(caliber_home)
    done = run(*args, env=env)
    assert done.returncode == 2
    assert done.stderr == (f"caliber: error: {variable} must be {BOUNDS[field].describe()}, "
                           f"got '{raw}'\n")
    assert queue_state(caliber_home) == before


@pytest.mark.parametrize(("option", "hint", "field"), [
    ("--lease", "'--lease'", "pinion_lease"), ("--timeout", "'--timeout'", "pinion_timeout"),
    ("--wait", "'-w' / '--wait'", "pinion_wait"),
    ("--attempts", "'-a' / '--attempts'", "pinion_attempts"),
    ("--max-attempts", "'--max-attempts'", "pinion_max_attempts"),
    ("--keep-runs", "'--keep-runs'", "pinion_keep_runs"),
    ("--concurrency", "'-c' / '--concurrency'", "pinion_concurrency"),
])
def test_a_bad_number_on_the_command_line_stops_the_pinion(
    option: str, hint: str, field: str, queued: str, caliber_home: Path
) -> None:
    """``--lease 1e17`` was taken, and the pinion died on an OverflowError with its claim."""
    before = queue_state(caliber_home)
    done = run("pinion", "init", "p", option, "1e17", env={"CALIBER_PINION_ATTEMPTS": "1",
                                                            "CALIBER_PINION_WAIT": "0"})
    assert done.returncode == 2
    assert done.stderr == (f"caliber: error: Invalid value for {hint}: must be "
                           f"{BOUNDS[field].describe()}, got '1e17' (see 'caliber pinion init "
                           "--help')\n")
    assert queue_state(caliber_home) == before


@pytest.mark.parametrize("args", [
    ["queue", "list", "-n", "1e30"], ["queue", "list", "--offset", "99999999999999999999"],
    ["results", "list", "-n", "99999999999999999999"],
    ["results", "prune", "--older-than", "999999999w"],
])
def test_other_numbers_on_the_command_line_are_bounded_too(
    args: list[str], queued: str, caliber_home: Path
) -> None:
    before = queue_state(caliber_home)
    done = run(*args)
    assert done.returncode == 2 and done.stderr.startswith("caliber: error: Invalid value for")
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert queue_state(caliber_home) == before


@pytest.mark.parametrize("raw", ["bogus", "forkserver", "0"])
def test_child_start_is_fork_or_spawn(
    raw: str, queued: str, caliber_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was read around the model, and anything but spawn meant fork, silently."""
    before = queue_state(caliber_home)
    done = run("pinion", "init", "p", "-a", "1", "-w", "0", env={"CALIBER_CHILD_START": raw})
    assert done.returncode == 2
    assert done.stderr == (f"caliber: error: CALIBER_CHILD_START must be fork or spawn, "
                           f"got {raw!r}\n")
    assert queue_state(caliber_home) == before
    monkeypatch.setenv("CALIBER_CHILD_START", raw)
    with pytest.raises(ConfigError, match=r"^CALIBER_CHILD_START must be fork or spawn"):
        load_settings()
    monkeypatch.setenv("CALIBER_CHILD_START", "Spawn")
    assert load_settings().child_start == "spawn"


def test_bounds_describe_themselves() -> None:
    assert BOUNDS["pinion_lease"].describe() == (
        "a number of seconds from 0.1 to 604800 (7 days)")
    assert BOUNDS["pinion_timeout"].describe() == (
        "a number of seconds above 0, up to 31536000 (365 days)")
    assert BOUNDS["pinion_max_attempts"].describe() == "a whole number from 1 to 1000"
    value: Any = BOUNDS["pinion_attempts"].check(" 7 ")
    assert value == 7 and isinstance(value, int)


@pytest.mark.parametrize(("name", "value"), [
    ("lease", 1e17), ("wait", math.nan), ("timeout", 0.0), ("attempts", -1),
    ("max_attempts", 0), ("keep_runs", 10**30),
])
def test_a_pinion_built_in_python_has_the_same_bounds(name: str, value: float) -> None:
    from caliber.pinion.loop import PinionConfig

    with pytest.raises(ConfigError, match=f"^the pinion's {name} must be "):
        PinionConfig(name="p", **{name: value})
    PinionConfig(name="p", lease=7 * 86400, timeout=0.5, keep_runs=0)


def test_the_model_checks_the_secret_key_as_load_key_does(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from caliber.errors import SecretKeyError
    from caliber.queue.secret import load_key

    monkeypatch.setenv("CALIBER_SECRET_KEY", "too-short")
    with pytest.raises(ConfigError, match=r"^CALIBER_SECRET_KEY is too short"):
        load_settings()
    with pytest.raises(SecretKeyError, match=r"^CALIBER_SECRET_KEY is too short"):
        load_key()
