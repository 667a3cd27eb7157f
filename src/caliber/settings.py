"""Settings of the remote queue: environment variables and ``.caliber/.env``.

Each value comes from, in this order: the argument given (``--project``/``--model`` on the
command line, ``project=``/``model=`` in Python), the environment, then the file
``.caliber/.env`` in the current folder (``KEY=VALUE`` lines, ``#`` comments, optional quotes
and ``export``).

=============================  ==============================================================
``CALIBER_SPECKLE_HOST``       the server, e.g. ``https://app.speckle.systems`` (``http://``
                               works too; no scheme means https)
``CALIBER_SPECKLE_PROJECT``    the project id; set means "use the remote queue"
``CALIBER_SPECKLE_MODEL``      the model holding the queue (default ``main``; made if missing)
``CALIBER_SPECKLE_TOKEN``      a personal access token (default: the Speckle Manager account
                               of that host)
``CALIBER_SPECKLE_SETTLE``     seconds a claim waits before it reads the log again (default 2)
``CALIBER_SPECKLE_MIN_LEASE``  shortest lease on the remote queue, in seconds (default 120)
``CALIBER_SPECKLE_TIMEOUT``    seconds any one request may take (default 30)
=============================  ==============================================================
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from caliber.errors import ConfigError

ENV_FILE = Path(".caliber") / ".env"
PREFIX = "CALIBER_SPECKLE_"
DEFAULT_MODEL = "main"
DEFAULT_SETTLE = 2.0  # seconds
DEFAULT_MIN_LEASE = 120.0  # seconds
DEFAULT_TIMEOUT = 30.0  # seconds

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
        raise ConfigError(f"cannot read {path}: {exc}") from None
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
            f"{PREFIX}HOST {host!r} is not a server address; use e.g. https://app.speckle.systems"
        )
    if parts.path.strip("/") or parts.query:
        raise ConfigError(
            f"{PREFIX}HOST {host!r} has a path; give only the server, e.g. "
            "https://app.speckle.systems"
        )
    return f"{parts.scheme}://{parts.netloc.lower()}"


def _seconds(name: str, raw: str | None, default: float, *, minimum: float) -> float:
    if raw is None or not raw.strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < minimum:
        raise ConfigError(f"{PREFIX}{name} must be a number of seconds >= {minimum:g}, "
                          f"got {raw!r}")
    return value


def load_remote_settings(
    project: str | None = None, model: str | None = None
) -> RemoteSettings | None:
    """The remote queue's settings, or None when no project is set (the local queue)."""
    file_values = read_env_file(ENV_FILE)

    def get(name: str, given: str | None = None) -> str | None:
        for value in (given, os.environ.get(PREFIX + name), file_values.get(PREFIX + name)):
            if value is not None and value.strip():
                return value.strip()
        return None

    project_id = get("PROJECT", project)
    if project_id is None:
        return None
    host = get("HOST")
    if host is None:
        raise ConfigError(
            f"a Speckle project is set ({project_id}) but no server: set {PREFIX}HOST (e.g. "
            f"https://app.speckle.systems) in the environment or in {ENV_FILE}, or use --local"
        )
    return RemoteSettings(
        host=normalise_host(host),
        project=project_id,
        model=get("MODEL", model) or DEFAULT_MODEL,
        token=get("TOKEN"),
        settle=_seconds("SETTLE", get("SETTLE"), DEFAULT_SETTLE, minimum=0),
        min_lease=_seconds("MIN_LEASE", get("MIN_LEASE"), DEFAULT_MIN_LEASE, minimum=0),
        timeout=_seconds("TIMEOUT", get("TIMEOUT"), DEFAULT_TIMEOUT, minimum=0.1),
    )
