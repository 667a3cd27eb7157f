"""Caliber's settings: every ``CALIBER_*`` variable, read from one place.

Each value comes from, first to last: the argument given (a command-line option, ``project=``
in Python), the environment, then the file ``.caliber/.env`` in the current folder
(``KEY=VALUE`` lines, ``#`` comments, optional quotes and ``export``). A blank value counts as
unset. Every variable, its type, default and meaning is declared once, in
:class:`caliber.settings_model.Settings` (a pydantic-settings model whose only source is
:func:`environment` below); docs/settings.md is the table of them.

This module imports no pydantic: the fast read paths of the command line (``caliber queue
list`` on the local queue) read their few plain values with :func:`lookup`, the same source
the model reads; everything else asks :func:`load_settings` for the validated model.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from caliber.errors import ConfigError

if TYPE_CHECKING:  # pydantic stays out of the fast read paths
    from caliber.settings_model import Settings

log = logging.getLogger(__name__)

ENV_FILE = Path(".caliber") / ".env"
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

_LINE = re.compile(r"\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*")


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


def read_env_file(path: Path) -> dict[str, str]:
    """``KEY=VALUE`` lines; ``#`` starts a comment (outside quotes); blank lines ignored."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    values: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise ConfigError(f"{path}, line {number}: expected KEY=VALUE, got {stripped!r}")
        key, raw = match.groups()
        values[key] = _value(raw)
    return values


def _value(raw: str) -> str:
    if raw[:1] in ("'", '"'):
        end = raw.find(raw[0], 1)
        if end > 0:
            return raw[1:end]
    return raw.split(" #", 1)[0].split("\t#", 1)[0].strip()


def environment() -> dict[str, str]:
    """Every ``CALIBER_*`` value that is set: the environment over ``.caliber/.env``, values
    stripped, blank ones left out. The one source of every setting."""
    values: dict[str, str] = {}
    for source in (read_env_file(ENV_FILE), os.environ):
        values.update((k, v.strip()) for k, v in source.items()
                      if k.startswith(PREFIX) and v.strip())
    return values


def lookup(name: str) -> str | None:
    """One plain value (``CALIBER_HOME``, say) from :func:`environment`, without pydantic."""
    return environment().get(name)


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
    project: str | None = None, model: str | None = None
) -> RemoteSettings | None:
    """The remote queue's settings, or None when no project is set (the local queue)."""
    values = environment()
    project_id = (project or "").strip() or values.get(SPECKLE + "PROJECT")
    if project_id is None:
        return None  # the local queue: decided without pydantic
    settings = load_settings(speckle_project=project_id, speckle_model=model)
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
