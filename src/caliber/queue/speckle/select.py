"""Whether a queue choice is the remote queue's (:mod:`caliber.queue.registry`): a Speckle
URL, or, without a URL, a Speckle project set (``--project``, ``CALIBER_SPECKLE_PROJECT``,
``.caliber/.env``) and no ``--local``. Light: neither specklepy nor, until a project is set,
pydantic.

URLs: ``speckle://host[:port]/PROJECT[/MODEL]`` (https), ``speckle+http://host:port/...``
(plain http: a server on this machine), ``speckle+https://`` as ``speckle://``; the model is
everything after the project (it may hold ``/``; default: ``CALIBER_SPECKLE_MODEL``, else
``main``), percent-decoded. The token
is still ``CALIBER_SPECKLE_TOKEN`` (never in the URL), the other settings as without a URL.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import unquote

from caliber.queue import url as urls

if TYPE_CHECKING:
    from caliber.queue.target import Choice, QueueTarget
    from caliber.settings import RemoteSettings

KIND = "speckle"
SCHEMES = ("speckle", "speckle+https", "speckle+http")
INSTALL = None  # the backend says itself what to install (caliber.queue.speckle.adapter)


def select(choice: Choice) -> QueueTarget | None:
    from caliber.settings import load_remote_settings

    remote: RemoteSettings | None
    if choice.url is not None:
        if urls.scheme(choice.url) not in SCHEMES:
            return None
        remote = from_url(choice.url, choice.url_from)
    elif choice.local:
        return None
    else:
        remote = load_remote_settings(project=choice.project, model=choice.model)
    return None if remote is None else target(remote)


def target(remote: RemoteSettings) -> QueueTarget:
    from caliber.queue.target import QueueTarget

    return QueueTarget(kind=KIND, location=remote.location, settings=remote)


def from_url(url: str, url_from: str) -> RemoteSettings:
    """The remote queue's settings for a Speckle URL (ConfigError naming the URL)."""
    from caliber.settings import load_remote_settings

    parts = urls.split(url, url_from)
    if parts.username is not None or parts.password is not None:
        raise urls.bad(url, url_from, "put the token in CALIBER_SPECKLE_TOKEN, not in the URL")
    if not parts.hostname:
        raise urls.bad(url, url_from, "it names no server: speckle://host/PROJECT/MODEL")
    if parts.query or parts.fragment:
        raise urls.bad(url, url_from, "a Speckle URL takes no ?query or #fragment")
    project, _, model = parts.path.strip("/").partition("/")
    project, model = unquote(project).strip(), unquote(model).strip()
    if not project:
        raise urls.bad(url, url_from, "it names no project: speckle://host/PROJECT/MODEL")
    web = "http" if parts.scheme.lower() == "speckle+http" else "https"
    remote = load_remote_settings(project=project, model=model or None,
                                  host=f"{web}://{parts.netloc}")
    assert remote is not None  # a project is given
    return remote
