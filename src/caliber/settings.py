"""Caliber's settings: every ``CALIBER_*`` variable, read from one place.

Each value comes from, first to last: the argument given (a command-line option, ``project=``
in Python), the environment, then the file ``.caliber/.env`` in the current folder, when it can
be trusted (:mod:`caliber.settings_file`: a regular file of your own that only you can write;
any other is ignored, with one line on stderr saying why). A blank value counts as unset.
Every variable, its type, default, bounds and meaning is declared once, in
:class:`caliber.settings_model.Settings` (a pydantic-settings model whose only source is
:func:`environment` below); docs/settings.md is the table of them.

This module imports no pydantic: the fast read paths of the command line (``caliber queue
list`` on the local queue) read their few plain values with :func:`lookup`, the same source
the model reads, and the checks both share (:data:`BOUNDS`, :func:`check_child_start`) are
here; everything else asks :func:`load_settings` for the validated model.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from caliber import settings_file
from caliber.errors import ConfigError

if TYPE_CHECKING:  # pydantic stays out of the fast read paths
    from caliber.settings_model import Settings

log = logging.getLogger(__name__)

ENV_FILE = settings_file.FOLDER / settings_file.NAME
PREFIX = "CALIBER_"
SPECKLE = "CALIBER_SPECKLE_"
DEFAULT_MODEL = "main"
DEFAULT_SETTLE = 2.0  # seconds
DEFAULT_MIN_LEASE = 120.0  # seconds
DEFAULT_TIMEOUT = 30.0  # seconds
DEFAULT_ATTEMPTS = 10  # empty looks in a row before a pinion stops
DEFAULT_WAIT = 5.0  # seconds between a pinion's looks for work
DEFAULT_LEASE = 60.0  # seconds a claim holds a workload without renewal
DEFAULT_MAX_ATTEMPTS = 3  # claims of one workload before it is failed
DEFAULT_CANCEL_GRACE = 10.0  # seconds between SIGTERM (cancel --now, a time limit) and SIGKILL
DEFAULT_CONCURRENCY = 1  # workloads a pinion runs at once: one by one
MAX_CONCURRENCY = 256  # workloads a pinion runs at once, at most (each is a process, 2 pipes)
CHILD_STARTS = ("fork", "spawn")
HOUR = 3600  # seconds
DAY = 24 * HOUR
MAX_COUNT = 1_000_000  # looks, run folders kept
DEFAULT_ARRAY_INLINE_MAX = 64 * 1024  # bytes: a bigger array is stored as binary, not JSON
GIB = 1 << 30  # bytes


@dataclass(frozen=True)
class Bounds:
    """The values a number setting, and the command-line option that is its twin, may take:
    finite, from ``low`` (excluded when ``above``) to ``high``. Every upper bound keeps
    ``now + value`` far inside what a datetime holds."""

    low: float
    high: float
    whole: bool = False
    """A count (a whole number), else a number of seconds (fractions allowed)."""
    above: bool = False

    def describe(self) -> str:
        """``a number of seconds from 0.1 to 604800 (7 days)``."""
        if self.whole:
            kind, span = "a whole number", ""
        else:
            kind, span = "a number of seconds", f" ({_span(self.high)})"
        start = f"above {_text(self.low)}, up to" if self.above else f"from {_text(self.low)} to"
        return f"{kind} {start} {_text(self.high)}{span}"

    def check(self, raw: object) -> int | float:
        """``raw`` (text or a number) as a number within the bounds; ValueError ("must be
        ..., got ...") otherwise."""
        try:
            value = float(raw.strip() if isinstance(raw, str) else raw)  # type: ignore[arg-type]
        except (TypeError, ValueError, OverflowError):
            value = math.nan
        if (not math.isfinite(value) or value < self.low or value > self.high
                or (self.above and value == self.low) or (self.whole and not value.is_integer())
                or isinstance(raw, bool)):
            raise ValueError(f"must be {self.describe()}, got {raw!r}")
        return int(value) if self.whole else value


def _text(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def _span(seconds: float) -> str:
    for unit, name in ((DAY, "day"), (HOUR, "hour"), (60, "minute")):
        if seconds >= unit and seconds % unit == 0:
            count = int(seconds // unit)
            return f"{count} {name}{'s' if count != 1 else ''}"
    return f"{_text(seconds)} s"


BOUNDS: dict[str, Bounds] = {
    "speckle_settle": Bounds(0, HOUR),
    "speckle_min_lease": Bounds(0, DAY),
    "speckle_timeout": Bounds(0.1, HOUR),
    "pinion_attempts": Bounds(0, MAX_COUNT, whole=True),
    "pinion_wait": Bounds(0, DAY),
    "pinion_lease": Bounds(0.1, 7 * DAY),
    "pinion_timeout": Bounds(0, 365 * DAY, above=True),
    "pinion_max_attempts": Bounds(1, 1000, whole=True),
    "pinion_keep_runs": Bounds(0, MAX_COUNT, whole=True),
    "pinion_cancel_grace": Bounds(0, HOUR),
    "pinion_concurrency": Bounds(1, MAX_CONCURRENCY, whole=True),
    "array_inline_max": Bounds(0, GIB, whole=True),
}
"""The bounds of every number setting, by field of :class:`caliber.settings_model.Settings`
(a test checks that each number field has its bounds)."""


@dataclass(frozen=True)
class RemoteSettings:
    """Where the remote queue is and how to talk to it."""

    host: str
    """``scheme://host[:port]``, no trailing slash."""
    project: str
    model: str = DEFAULT_MODEL
    token: str | None = None
    settle: float = DEFAULT_SETTLE
    min_lease: float = DEFAULT_MIN_LEASE
    timeout: float = DEFAULT_TIMEOUT

    @property
    def use_ssl(self) -> bool:
        return self.host.startswith("https://")

    @property
    def netloc(self) -> str:
        """``host[:port]`` without the scheme (what specklepy's client takes)."""
        return urlsplit(self.host).netloc

    @property
    def location(self) -> str:
        return f"{self.host} project {self.project} model {self.model}"


# .caliber/.env, read once while it stays the same: (its identity, when it was read, values)
_file_cache: tuple[tuple[object, ...], int, dict[str, str]] | None = None
_told: set[tuple[str, str]] = set()
RECENT = 2_000_000_000  # ns: a file changed this shortly before it was read is read again


def file_values() -> dict[str, str]:
    """The values of ``.caliber/.env`` when it can be trusted (:mod:`caliber.settings_file`);
    when it is ignored, one line saying why goes to the ``caliber`` logger (stderr, unless
    logging is set up otherwise), once per process. The file is read once and kept while its
    folder's and its own ``stat`` stay the same; one changed less than :data:`RECENT` before
    it was read is read again, as a file's times can be too coarse to show a second write."""
    global _file_cache
    started = time.time_ns()
    identity, changed = settings_file.identity()
    cached = _file_cache
    if cached is not None and cached[0] == identity and changed < cached[1] - RECENT:
        return cached[2]
    found = settings_file.read_env_file()
    if found.ignored is not None:
        told = (str(identity[0]), found.ignored)  # (current folder, why)
        if told not in _told:
            _told.add(told)
            log.warning("%s", found.ignored)
    _file_cache = (identity, started, found.values)
    return found.values


def environment() -> dict[str, str]:
    """Every ``CALIBER_*`` value that is set: the environment over ``.caliber/.env``, values
    stripped, blank ones left out. The one source of every setting."""
    values: dict[str, str] = {}
    for source in (file_values(), os.environ):
        values.update((k, v.strip()) for k, v in source.items()
                      if k.startswith(PREFIX) and v.strip())
    return values


def lookup(name: str) -> str | None:
    """One plain value (``CALIBER_HOME``, say) from :func:`environment`, without pydantic."""
    return environment().get(name)


def check_child_start(raw: str) -> str:
    """``CALIBER_CHILD_START``'s value, ``fork`` or ``spawn`` (any case); ConfigError else."""
    wanted = raw.strip().lower()
    if wanted not in CHILD_STARTS:
        raise ConfigError(f"{PREFIX}CHILD_START must be fork or spawn, got {raw!r}")
    return wanted


def child_start() -> str | None:
    """How a pinion is told to start a workload's process (None: not set), checked."""
    raw = lookup(PREFIX + "CHILD_START")
    return None if raw is None else check_child_start(raw)


def load_settings(**given: object) -> Settings:
    """The validated settings; ``given`` (field names, e.g. ``speckle_project``) win over the
    environment and ``.caliber/.env`` when not None or blank. ConfigError names a bad value."""
    from caliber.settings_model import Settings

    return Settings.load(**given)


def normalise_host(host: str) -> str:
    """``https://host[:port]`` from what a user writes (a bare host means https)."""
    text = host.strip()
    if "://" not in text:
        text = "https://" + text
    parts = urlsplit(text.rstrip("/"))
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{SPECKLE}HOST {host!r} is not a server address; use e.g. https://app.speckle.systems"
        )
    if parts.path.strip("/") or parts.query:
        raise ConfigError(
            f"{SPECKLE}HOST {host!r} has a path; give only the server, e.g. "
            "https://app.speckle.systems"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def load_remote_settings(
    project: str | None = None, model: str | None = None, host: str | None = None
) -> RemoteSettings | None:
    """The remote queue's settings, or None when no project is set (the local queue).
    ``host`` (from a ``speckle://`` queue URL) wins over ``CALIBER_SPECKLE_HOST``."""
    values = environment()
    project_id = (project or "").strip() or values.get(SPECKLE + "PROJECT")
    if project_id is None:
        return None  # the local queue: decided without pydantic
    settings = load_settings(speckle_project=project_id, speckle_model=model,
                             speckle_host=host)
    if settings.speckle_host is None:
        raise ConfigError(
            f"a Speckle project is set ({project_id}) but no server: set {SPECKLE}HOST (e.g. "
            f"https://app.speckle.systems) in the environment or in {ENV_FILE}, or use --local"
        )
    remote = RemoteSettings(
        host=normalise_host(settings.speckle_host),
        project=project_id,
        model=settings.speckle_model,
        token=(settings.speckle_token.get_secret_value() if settings.speckle_token else None),
        settle=settings.speckle_settle,
        min_lease=settings.speckle_min_lease,
        timeout=settings.speckle_timeout,
    )
    log.debug("the remote queue: %s (token: %s)", remote.location,
              "set" if remote.token else "the Speckle Manager account of the host")
    return remote
