"""Every call into specklepy (and to the Speckle server) lives here.

specklepy is imported lazily, only when a remote queue is opened. This module gives the remote
backend a small, typed surface (:class:`SpeckleConnection`): list the versions of one model,
create a version, upload objects, fetch objects; and it translates what can go wrong (requests,
gql and specklepy errors, HTTP 401/403/429/5xx, GraphQL error codes) into one clear
:mod:`caliber.errors` line naming the host, project and model.

Requests and retries:

* every request has a timeout (``RemoteSettings.timeout``; specklepy's own GraphQL transport
  and object sessions have none after authentication, so this module brings its own);
* a request the server refused with HTTP 429 (rate limit) did not happen, so it is repeated
  after ``Retry-After`` (or a capped exponential back-off), for at most ``RATE_LIMIT_GIVE_UP``;
* a request that never reached the server (connection refused, connect timeout) is repeated
  a few times; one that may have reached it (read timeout, reset, HTTP 5xx) is repeated only
  when it is safe to repeat: reads, and uploads of content-addressed objects, never version
  creates (those raise :class:`AmbiguousWriteError` for the caller to check).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import importlib
import json
import os
import random
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from caliber.errors import CaliberError, ConfigError, QueueError
from caliber.settings import RemoteSettings

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0  # seconds: the longest a connection may take to open
RATE_LIMIT_FIRST_WAIT = 1.0  # seconds: back-off after a 429 without Retry-After
RATE_LIMIT_MAX_WAIT = 30.0  # seconds: the longest single back-off
RATE_LIMIT_GIVE_UP = 180.0  # seconds: total back-off before a rate limit becomes an error
TRANSIENT_RETRIES = 3  # repeats of a safe request after a network error or HTTP 5xx
TRANSIENT_WAIT = 0.25  # seconds: first back-off after a network error (doubles)
UPLOAD_BATCH_BYTES = 8_000_000  # uncompressed bytes of objects per upload request
VERSIONS_PAGE = 100  # the largest page the server lists
DELETE_BATCH = 100  # versions deleted per request
INSTALL_HINT = "pip install 'specklepy>=2026.9,<2027'"  # the speckle extra's range
SOURCE_APPLICATION = "caliber"
_MEMBER_BAD = re.compile(r"[./]")
_RESERVED = {"id", "speckle_type", "applicationId", "totalChildrenCount", "units"}

_MODEL_BY_NAME = """
query CaliberModelByName($projectId: String!, $name: String!) {
  project(id: $projectId) { modelByName(name: $name) { id name } }
}
"""


class AmbiguousWriteError(QueueError):
    """A version create may or may not have reached the server (the answer was lost)."""


class GraphQLCodeError(QueueError):
    """The server answered with GraphQL errors; ``codes`` holds their extension codes."""

    def __init__(self, message: str, codes: list[str]) -> None:
        super().__init__(message)
        self.codes = codes


@dataclass(frozen=True)
class VersionInfo:
    """What the queue needs of one version."""

    id: str
    object_id: str
    message: str
    created_at: dt.datetime
    author: str | None = None


@dataclass(frozen=True)
class VersionPage:
    """One page of versions, newest first. ``cursor`` asks for the next page from the
    millisecond of this page's last version on, so that page repeats the versions of that
    millisecond: readers drop the ones they have by id (see :meth:`list_versions`)."""

    items: list[VersionInfo]
    cursor: str | None
    total: int


def import_specklepy() -> None:
    """Fail with one clear line when the ``speckle`` extra is not installed."""
    try:
        importlib.import_module("specklepy.api.client")
    except ImportError as exc:
        raise ConfigError(
            f"the remote queue on Speckle needs specklepy ({exc}): {INSTALL_HINT}"
        ) from exc


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """specklepy 2026.9 marks the JSON object path deprecated; it is what every server
    speaks, so its DeprecationWarnings are not the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def _requests() -> Any:
    return importlib.import_module("requests")


# --- accounts -------------------------------------------------------------------------------


def _same_server(url: str | None, host: str) -> bool:
    from urllib.parse import urlsplit

    if not url:
        return False
    text = url.strip().rstrip("/")
    if "://" not in text:
        text = "https://" + text
    return urlsplit(text).netloc.lower() == urlsplit(host).netloc.lower()


def account_token(host: str) -> str:
    """The token of the Speckle Manager account (specklepy's local accounts) for ``host``."""
    import_specklepy()
    from specklepy.api.credentials import get_local_accounts

    # specklepy creates its folders and an empty Accounts.db when it looks for accounts:
    # without Speckle Manager's folder there are none, and nothing is written in the home.
    with _quiet():
        accounts = get_local_accounts() if _speckle_folder().is_dir() else []
    matching = [a for a in accounts if a.token and _same_server(a.serverInfo.url, host)]
    if not matching:
        servers = sorted({a.serverInfo.url for a in accounts if a.serverInfo.url})
        known = f" (it has accounts for: {', '.join(servers)})" if servers else ""
        raise ConfigError(
            f"no token for {host}: set CALIBER_SPECKLE_TOKEN, or add an account for {host} in "
            f"Speckle Manager{known}"
        )
    matching.sort(key=lambda a: not a.isDefault)
    return str(matching[0].token)


# --- objects --------------------------------------------------------------------------------


def _speckle_folder() -> Path:
    """Where Speckle Manager keeps its accounts, found as specklepy finds it
    (``specklepy.core.helpers.speckle_path_provider``) but without creating anything."""
    override = os.environ.get("SPECKLE_USERDATA_PATH")
    if override:
        base = Path(override)
    elif sys.platform.startswith("win"):
        base = Path(os.environ.get("APPDATA", ""))
    elif sys.platform.startswith("darwin"):
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".config")
    return base / "Speckle"


def is_speckle_object(value: object) -> bool:
    """Whether ``value`` is a specklepy ``Base`` (without importing specklepy needlessly)."""
    if not type(value).__module__.startswith("specklepy"):
        return False
    from specklepy.objects.base import Base

    return isinstance(value, Base)


def object_to_dict(value: Any) -> dict[str, Any]:
    """A specklepy object as its serialised Speckle JSON (with ``speckle_type`` and ``id``)."""
    from specklepy.serialization.base_object_serializer import BaseObjectSerializer

    with _quiet():
        _, data = BaseObjectSerializer().traverse_base(value)
    return dict(data)


def _object_from_dict(data: Mapping[str, Any]) -> Any:
    from specklepy.serialization.base_object_serializer import BaseObjectSerializer
    from specklepy.transports.memory import MemoryTransport

    with _quiet():
        return BaseObjectSerializer(read_transport=MemoryTransport()).recompose_base(dict(data))


def recompose(obj: Mapping[str, Any], objects: Mapping[str, Mapping[str, Any]]) -> Any:
    """The Speckle JSON of a stored object with its detached children and chunked lists
    put back in place (``objects``: at least its closure), as :func:`object_to_dict` writes
    a specklepy object (so, with the ids of the inline form)."""
    from specklepy.serialization.base_object_serializer import BaseObjectSerializer
    from specklepy.transports.memory import MemoryTransport

    with _quiet():
        memory = MemoryTransport()
        for object_id in obj.get("__closure") or {}:
            memory.save_object(object_id, json.dumps(objects[object_id]))
        base = BaseObjectSerializer(read_transport=memory).recompose_base(dict(obj))
    return object_to_dict(base)


def member_name(key: str) -> str:
    """A dict key as a Speckle member name: no ``.`` or ``/``, no leading ``@`` or ``_``, not
    a name Speckle keeps for itself (those get a trailing ``_``)."""
    name = _MEMBER_BAD.sub("_", key)
    bare = name.lstrip("@_")  # '@' detaches, a leading '_' is never stored
    if not bare:
        return "key_"
    return f"{bare}_" if bare != name or bare in _RESERVED else bare


def to_speckle(value: Any) -> Any:
    """A JSON value as Speckle members: serialised Speckle objects become those objects
    again, dicts become ``Base`` objects, lists stay lists, scalars stay."""
    from specklepy.objects.base import Base

    if isinstance(value, dict):
        if isinstance(value.get("speckle_type"), str) and value["speckle_type"] != "reference":
            try:
                return _object_from_dict(value)
            except Exception:  # not a real Speckle object after all: keep it as members
                pass
        obj = Base()
        for key, item in value.items():
            obj[member_name(str(key))] = to_speckle(item)
        return obj
    if isinstance(value, list):
        return [to_speckle(v) for v in value]
    return value


def new_object(members: Mapping[str, Any]) -> Any:
    """A ``Base`` with the given members (names starting ``@`` are stored detached)."""
    from specklepy.objects.base import Base

    obj = Base()
    for key, value in members.items():
        obj[key] = value
    return obj


def serialise(obj: Any) -> tuple[str, dict[str, str]]:
    """``(root id, {id: json})`` of an object and its detached children."""
    from specklepy.serialization.base_object_serializer import BaseObjectSerializer
    from specklepy.transports.memory import MemoryTransport

    with _quiet():
        memory = MemoryTransport()
        root_id, _ = BaseObjectSerializer(write_transports=[memory]).write_json(obj)
    return str(root_id), dict(memory.objects)


# --- the connection -------------------------------------------------------------------------


def _keepalive_transport(base: Any) -> Any:
    """specklepy's gql transport class, made to reuse one HTTP session (keep-alive) and to put
    a timeout on every request."""

    class KeepAlive(base):  # type: ignore[misc]
        def __init__(self, *args: Any, shared: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.shared = shared

        def connect(self) -> None:
            self.session = self.shared

        def close(self) -> None:
            self.session = None

    return KeepAlive


def _parse_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        item = todo.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        yield item
        inner = getattr(item, "exception", None)
        todo += [inner if isinstance(inner, BaseException) else None,
                 item.__cause__, item.__context__]


class SpeckleConnection:
    """An authenticated connection to one model of one project."""

    def __init__(self, settings: RemoteSettings) -> None:
        import_specklepy()
        self.settings = settings
        self.host = settings.host
        self.project_id = settings.project
        self.model_name = settings.model
        self.model_key = _model_key(settings.model)
        self.model_id: str | None = None
        """None while the model does not exist: reading finds an empty log, the first
        write makes the model."""
        self._models: dict[str, str] = {}  # ids of other models (results models) by name
        self.timeout = (min(CONNECT_TIMEOUT, settings.timeout), settings.timeout)
        self.lock = threading.RLock()
        self.session = _requests().Session()
        self.client: Any = None
        token = settings.token or account_token(settings.host)
        self.session.headers["Authorization"] = f"Bearer {token}"
        try:
            self._connect(token)
            self.model_id = self._model_by_name(self.model_key)  # checks the project too
        except BaseException:
            self.close()
            raise

    @property
    def where(self) -> str:
        return f"{self.host} project {self.project_id}"

    def close(self) -> None:
        self.session.close()

    # -- set up --

    def _connect(self, token: str) -> None:
        from gql.transport.requests import RequestsHTTPTransport
        from specklepy.api.client import SpeckleClient
        from specklepy.logging import metrics

        metrics.disable()
        with _quiet():
            client = SpeckleClient(
                host=self.settings.netloc, use_ssl=self.settings.use_ssl,
                connection_retries=0, connection_timeout=int(max(1, self.timeout[0])),
            )
        client.account.token = token
        client.account.serverInfo.url = client.url
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                   "apollographql-client-name": SOURCE_APPLICATION}
        transport = _keepalive_transport(RequestsHTTPTransport)(
            url=client.graphql, headers=headers, verify=True, timeout=self.timeout,
            shared=self.session,
        )
        client.httpclient.transport = transport
        self.client = client
        self.graphql_transport = transport
        user = self.call("check the token", client.active_user.get)
        self.user = getattr(user, "name", None)

    def ensure_model(self) -> str:
        """The model's id, made now if it does not exist yet (the first write makes it)."""
        if self.model_id is None:
            self.model_id = self.named_model(
                self.model_key, "Caliber workflow queue: every version is one queue event",
                shown=self.model_name)
        return self.model_id

    def named_model(self, key: str, description: str, *, shown: str | None = None) -> str:
        """The id of the model ``key`` (a name as the server stores it), made now if it does
        not exist yet."""
        if key in self._models:
            return self._models[key]
        from specklepy.api.inputs.model_inputs import CreateModelInput

        for attempt in range(2):
            found = self._model_by_name(key)
            if found is not None:
                self._models[key] = found
                return found
            try:
                model = self.call(
                    "create the model", self.client.model.create,
                    CreateModelInput(name=key, description=description,
                                     project_id=self.project_id),
                )
                self._models[key] = str(model.id)
                return self._models[key]
            except GraphQLCodeError as exc:
                if "BRANCH_CREATE_ERROR" in exc.codes and attempt == 0:
                    continue  # made by someone else meanwhile (or a wildcard clash): look again
                if {"BRANCH_NAME_ERROR", "BRANCH_CREATE_ERROR"} & set(exc.codes):
                    raise ConfigError(
                        f"{self.host} refuses the model name '{shown or key}' on project "
                        f"{self.project_id}: {exc}"
                    ) from exc
                raise
        raise ConfigError(f"cannot find or create the model '{shown or key}' on "
                          f"{self.where}")  # pragma: no cover

    def find_model(self, key: str) -> str | None:
        """The id of the model ``key`` (a name as the server stores it), None if none."""
        if key not in self._models:
            found = self._model_by_name(key)
            if found is None:
                return None
            self._models[key] = found
        return self._models[key]

    def _model_by_name(self, name: str) -> str | None:
        """The model's id, ``None`` if it does not exist; a project that is missing or not
        readable is a ConfigError. (One small query: specklepy's ``project.get`` asks for
        ``sourceApps``, which the server reads from every version of the project.)"""
        from gql import gql

        request = gql(_MODEL_BY_NAME)
        request.variable_values = {"projectId": self.project_id, "name": name}
        try:
            data = self.call("find the queue's model", self.client.httpclient.execute, request)
        except GraphQLCodeError as exc:
            if {"STREAM_NOT_FOUND", "FORBIDDEN", "STREAM_INVALID_ACCESS_ERROR"} & set(exc.codes):
                raise ConfigError(
                    f"project {self.project_id} not found on {self.host}, or this account "
                    "has no access to it: check CALIBER_SPECKLE_PROJECT / --project (the id is "
                    "in the project's address, .../projects/<id>)"
                ) from exc
            if "BRANCH_NOT_FOUND" in exc.codes:
                return None
            raise
        return str(data["project"]["modelByName"]["id"])

    # -- versions --

    def list_versions(self, cursor: str | None = None,
                      model_id: str | None = None) -> VersionPage:
        """One page of the model's versions, newest first (none while the model does not
        exist: it is looked for again each time).

        The server stores ``createdAt`` to the millisecond and gives the next page the
        versions with ``createdAt < cursor``, its cursor being the page's last ``createdAt``
        (repositories/commits.ts): a version made in the same millisecond as the last one of
        a page would never be listed. So the cursor returned here is one millisecond later
        (the server reads it as a time): the next page lists that millisecond again.

        ``model_id``: another model's versions (a results model's) instead."""
        if model_id is None and self.model_id is None:
            self.model_id = self._model_by_name(self.model_key)
            if self.model_id is None:
                return VersionPage([], None, 0)
        page = self.call(
            "list the queue's versions", self.client.version.get_versions,
            model_id or self.model_id, self.project_id, limit=VERSIONS_PAGE, cursor=cursor,
        )
        items = [
            VersionInfo(
                id=str(v.id), object_id=str(v.referenced_object), message=v.message or "",
                created_at=_as_utc(v.created_at),
                author=getattr(v.author_user, "name", None) if v.author_user else None,
            )
            for v in page.items
        ]
        following = page.cursor
        if items:
            after = items[-1].created_at.astimezone(dt.UTC) + dt.timedelta(milliseconds=1)
            mine = after.isoformat(timespec="microseconds").replace("+00:00", "Z")
            if mine != cursor:  # (a whole page in one millisecond: take the server's)
                following = mine
        return VersionPage(items, following, int(page.total_count))

    def create_version(self, object_id: str, message: str,
                       model_id: str | None = None) -> VersionInfo:
        """Create a version of the queue's model (or of ``model_id``); never repeated after a
        lost answer: AmbiguousWriteError."""
        from specklepy.api.inputs.version_inputs import CreateVersionInput

        version_input = CreateVersionInput(
            object_id=object_id, model_id=model_id or self.ensure_model(),
            project_id=self.project_id,
            message=message, source_application=SOURCE_APPLICATION,
        )

        def create() -> Any:
            with _quiet():
                return self.client.version.create(version_input)

        version = self.call("write to the queue", create, safe=False)
        return VersionInfo(id=str(version.id), object_id=object_id, message=message,
                           created_at=_as_utc(version.created_at))

    def delete_versions(self, ids: list[str]) -> None:
        """Delete versions of the model, :data:`DELETE_BATCH` a request (``results prune``;
        never repeated after a lost answer: a prune run again deletes what is left)."""
        from specklepy.api.inputs.version_inputs import DeleteVersionsInput

        for start in range(0, len(ids), DELETE_BATCH):
            batch = DeleteVersionsInput(version_ids=ids[start:start + DELETE_BATCH],
                                        project_id=self.project_id)
            self.call("delete versions of the queue", self.client.version.delete, batch,
                      safe=False)

    # -- objects --

    def has_objects(self, ids: list[str]) -> dict[str, bool]:
        """Which of ``ids`` the server has (``/api/diff``)."""
        have: dict[str, bool] = {}
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            answer = self._rest("POST", f"/api/diff/{self.project_id}",
                                data={"objects": json.dumps(chunk)})
            have.update(answer.json())
        return {i: bool(have.get(i)) for i in ids}

    def upload(self, objects: Mapping[str, str]) -> None:
        """Store objects (``{id: json}``) the server does not have yet."""
        if not objects:
            return
        ids = list(objects)
        have = self.has_objects(ids)
        missing = [i for i in ids if not have.get(i)]
        batch: list[str] = []
        size = 0
        for object_id in missing:
            text = objects[object_id]
            if batch and size + len(text) > UPLOAD_BATCH_BYTES:
                self._upload_batch(batch)
                batch, size = [], 0
            batch.append(text)
            size += len(text)
        if batch:
            self._upload_batch(batch)

    def _upload_batch(self, batch: list[str]) -> None:
        body = gzip.compress(("[" + ",".join(batch) + "]").encode("utf-8"))
        self._rest("POST", f"/objects/{self.project_id}", expect=201,
                   files={"batch-1": ("batch-1", body, "application/gzip")})

    def get_objects(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Objects by id (the stored JSON of each, children as references)."""
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            # The server sends ``id<TAB>json`` lines only when Accept is exactly text/plain,
            # a JSON array otherwise (speckle-server modules/core/rest/diffDownload.ts).
            answer = self._rest("POST", f"/api/getobjects/{self.project_id}",
                                data={"objects": json.dumps(chunk)},
                                headers={"Accept": "text/plain"})
            found.update(_parse_objects(answer))
        return found

    def _rest(self, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        def send() -> Any:
            response = self.session.request(method, self.host + path, timeout=self.timeout,
                                            **kwargs)
            if response.status_code != expect:
                raise _HTTPStatus(response.status_code, response.headers.get("Retry-After"),
                                  response.text[:200])
            return response

        return self.call(f"{method} {path.split('/')[1]}", send)

    # -- errors and retries --

    def call(self, what: str, fn: Callable[..., T], *args: Any, safe: bool = True,
             **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with the retry policy of this module; foreign errors become
        one clear :mod:`caliber.errors` line."""
        waited = 0.0
        rate_wait = RATE_LIMIT_FIRST_WAIT
        attempt = 0
        while True:
            try:
                with self.lock:
                    return fn(*args, **kwargs)
            except CaliberError:
                raise
            except Exception as exc:
                kind, detail = self._classify(exc)
                failure = exc
            attempt += 1
            if kind == "rate":
                delay = min(float(detail or rate_wait), RATE_LIMIT_MAX_WAIT)
                delay *= 1 + random.random() / 4  # pinions that were refused together spread out
                if waited + delay > RATE_LIMIT_GIVE_UP:
                    raise QueueError(
                        f"{self.host} kept refusing requests (rate limit) for {waited:.0f} s "
                        f"while trying to {what}; try again later"
                    ) from failure
                time.sleep(delay)
                waited += delay
                rate_wait = min(rate_wait * 2, RATE_LIMIT_MAX_WAIT)
                continue
            repeatable = kind == "unsent" or (kind == "transient" and safe)
            if repeatable and attempt <= TRANSIENT_RETRIES:
                time.sleep(TRANSIENT_WAIT * 2 ** (attempt - 1))
                continue
            raise self._error(kind, detail, what, failure) from failure

    def _classify(self, exc: BaseException) -> tuple[str, str | None]:
        """``(kind, detail)``: rate, unsent, transient, token, access, graphql, other."""
        req = _requests()
        from gql.transport.exceptions import TransportQueryError, TransportServerError

        for item in _chain(exc):
            errors = getattr(item, "errors", None)
            if isinstance(item, TransportQueryError) or (
                isinstance(errors, list) and errors and isinstance(errors[0], dict)
            ):
                errors = errors or []
                codes = [str((e.get("extensions") or {}).get("code", "")) for e in errors]
                statuses = [(e.get("extensions") or {}).get("statusCode") for e in errors]
                if 429 in statuses or any("RATE_LIMIT" in c for c in codes):
                    return "rate", None
                text = "; ".join(str(e.get("message", "")) for e in errors) or str(item)
                return "graphql", json.dumps([codes, text])
            status: int | None = None
            retry_after: str | None = None
            if isinstance(item, _HTTPStatus):
                status, retry_after = item.status, item.retry_after
            elif isinstance(item, TransportServerError):
                status = item.code
                headers = getattr(self.graphql_transport, "response_headers", None) or {}
                retry_after = headers.get("Retry-After")
            if status is not None:
                if status == 429:
                    return "rate", retry_after
                if status == 403:
                    return "token", None
                if status == 401:
                    return "access", None
                if status >= 500 or status == 408:
                    return "transient", f"HTTP {status}"
                return "other", f"HTTP {status}: {item}"
            if isinstance(item, req.exceptions.ConnectTimeout):
                return "unsent", "the connection timed out"
            if isinstance(item, req.exceptions.Timeout):
                return "transient", f"no answer within {self.timeout[1]:g} s"
            if isinstance(item, req.exceptions.ConnectionError):
                text = str(item)
                if "NewConnection" in text or "Failed to establish" in text:
                    reason = "connection refused" if "refused" in text else "cannot connect"
                    return "unsent", reason
                return "transient", "the connection broke"
        return "other", str(exc)

    def _error(self, kind: str, detail: str | None, what: str, exc: BaseException) -> QueueError:
        if kind == "token":
            return _ConfigQueueError(
                f"{self.host} refused the token (invalid or expired): set "
                "CALIBER_SPECKLE_TOKEN to a valid personal access token, or add the account "
                "again in Speckle Manager"
            )
        if kind == "access":
            return _ConfigQueueError(
                f"{self.where}: not found or no access for this account (HTTP 401) while "
                f"trying to {what}: check CALIBER_SPECKLE_PROJECT / --project"
            )
        if kind == "graphql":
            codes, text = json.loads(detail or '[[], ""]')
            return GraphQLCodeError(f"{self.where} model {self.model_name}: {text}", codes)
        if kind in ("unsent", "transient"):
            message = f"cannot reach the Speckle server {self.host} ({detail}) to {what}"
            if kind == "transient" and what == "write to the queue":
                return AmbiguousWriteError(message + "; the write may or may not have happened")
            return QueueError(message)
        return QueueError(f"{self.where}: cannot {what}: {detail or exc}")


def _model_key(raw: str) -> str:
    """The model name as the server stores it (lower case, parts trimmed, empty parts
    dropped); a name the server refuses is refused here already, before any request."""
    name = "/".join(p.strip() for p in raw.split("/") if p.strip()).lower()
    if not name:
        raise ConfigError(f"the model name '{raw}' is empty")
    if re.match(r"[#$]|.*[,\\]", name, re.DOTALL):
        raise ConfigError(f"the Speckle server refuses the model name '{raw}': it may not "
                          "start with # or $, nor hold , or \\ (choose another "
                          "CALIBER_SPECKLE_MODEL / --model)")
    return name


class _ConfigQueueError(ConfigError, QueueError):
    """A setting the server refused (token, project): a usage error, exit code 2."""

    exit_code = 2


class _HTTPStatus(Exception):
    def __init__(self, status: int, retry_after: str | None, text: str) -> None:
        super().__init__(f"HTTP {status}: {text}")
        self.status = status
        self.retry_after = retry_after


def _as_utc(value: Any) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return _parse_time(str(value))


def _parse_objects(answer: Any) -> dict[str, dict[str, Any]]:
    """The objects of a ``getobjects`` answer: ``id<TAB>json`` lines, or (if the server chose
    JSON anyway) an array of objects, each carrying its ``id``."""
    body = answer.content.decode("utf-8")
    if answer.headers.get("Content-Type", "").startswith("application/json"):
        return {str(obj["id"]): obj for obj in json.loads(body) if isinstance(obj, dict)}
    found: dict[str, dict[str, Any]] = {}
    for line in body.splitlines():
        if "\t" in line:
            object_id, text = line.split("\t", 1)
            found[object_id] = json.loads(text)
    return found
