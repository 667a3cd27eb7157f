"""Queue URLs (``--queue``, ``CALIBER_QUEUE_URL``): their scheme, and how they are shown to
people, never with a password. Each backend's light module parses the URLs of its own schemes
(:mod:`caliber.queue.registry`); only :mod:`urllib.parse` here, no pydantic.
"""

from __future__ import annotations

import re
from urllib.parse import SplitResult, urlsplit

from caliber.errors import ConfigError

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


def scheme(url: str) -> str | None:
    """The URL's scheme, lower case (``sqlite``, ``postgresql``), or None when it has none."""
    found = _SCHEME.match(url)
    return found.group(1).lower() if found else None


def shown(url: str) -> str:
    """``url`` as people may see it: a password in it (``user:password@``) replaced by
    ``***``; text that is no URL as it is (it holds no ``@`` to hide behind)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.password is None:
        if "@" in url and "://" in url:  # unparsable, and it may hold a password: hide it
            head, _, tail = url.partition("://")
            return f"{head}://***@{tail.rpartition('@')[2]}"
        return url
    user, _, host = parts.netloc.rpartition("@")
    name = user.partition(":")[0]
    return parts._replace(netloc=f"{name}:***@{host}").geturl()


def split(url: str, url_from: str) -> SplitResult:
    """``url`` in its parts; ConfigError naming it (shown without a password) when it cannot
    be split (a bad port, say)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        raise bad(url, url_from, str(exc)) from None
    return parts


def bad(url: str, url_from: str, why: str) -> ConfigError:
    """The one line that says a queue URL is not usable, and why."""
    return ConfigError(f"{url_from} {shown(url)!r} is not a queue URL Caliber can use: {why}")


FORMS = ("sqlite:///path/to/caliber.db, postgresql://user@host:5432/db, "
         "speckle://host/PROJECT/MODEL or memory://NAME")
"""The URL forms, for messages."""
