"""The Speckle-compatible test server: GraphQL and the object REST endpoints over a threaded
standard-library HTTP server, answering as the real server's code does (each handler names the
file it follows; README.md has the whole table) and as the recordings show.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import gzip
import hashlib
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .graphql_api import ALL_SCOPES, RATE_LIMITED, Context, execute
from .ratelimit import RateLimit, RateLimiter
from .store import Store, User

INVALID_TOKEN = b'{"error":"Your token is not valid."}'
JSON_UTF8 = "application/json; charset=utf-8"
HTML_UTF8 = "text/html; charset=utf-8"  # what express's res.send(string) sends
MAX_UPLOAD_BYTES = 100 * 1024 * 1024  # MAX_OBJECT_UPLOAD_FILE_SIZE_MB's default, 100
MAX_OBJECT_SIZE_MB = 100  # getMaximumObjectSizeMB's default (modules/shared/helpers/envHelper.ts)
UPLOAD_NOT_MULTIPART = (
    b"Failed to parse request headers and body content as valid multipart/form-data."
)
UPLOAD_BAD_TYPE = (
    b'Invalid ContentType header. This route only accepts "application/gzip", "text/plain" or '
    b'"application/json".'
)
BAD_IDS = (
    'Invalid body. Please provide a JSON object containing the property "objects" of type '
    "string. The value must be a JSON string representation of an array of object IDs."
)
UPLOAD_NOT_ARRAY = b"Failed to parse data. Batch is expected to be wrapped in a JSON array."


@dataclass
class Reply:
    """One HTTP answer; ``gzip`` when the real server compressed that endpoint."""

    status: int
    body: bytes = b""
    content_type: str | None = None
    gzip: bool = False
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Exchange:
    """One served request, for tests that count calls (``SpeckleTestServer.log``)."""

    method: str
    path: str
    operation: str | None  # GraphQL operation name, e.g. "Create" for version.create
    status: int
    user: str | None
    sent: int = 0  # bytes of the answer's body, before any gzip


def jsonb(value: Any) -> Any:
    """Reorder object keys the way PostgreSQL ``jsonb`` stores them (shorter keys first)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: jsonb(value[k]) for k in keys}
    if isinstance(value, list):
        return [jsonb(v) for v in value]
    return value


def compact(value: Any) -> bytes:
    """``JSON.stringify``: no spaces, non-ASCII kept."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def stored_text(obj: dict[str, Any]) -> str:
    """An object as PostgreSQL prints a ``jsonb`` value (``data::text``): ``", "`` and
    ``": "`` between items, non-ASCII kept."""
    return json.dumps(obj, ensure_ascii=False)


def formatted(obj: dict[str, Any]) -> dict[str, Any]:
    """``getFormattedObjectFactory`` (modules/core/repositories/objects.ts): the stored data
    with ``totalChildrenCount`` set from its column, which object uploads leave null."""
    return {**obj, "totalChildrenCount": None}


def object_problem(obj: Any, limit_mb: float) -> str | None:
    """``prepInsertionObject`` (modules/core/services/objects/management.ts): an object
    without an id gets the MD5 of its JSON (one with ``hash`` takes that); an id that is not
    32 characters, or an object whose ``JSON.stringify`` is longer than ``limit_mb`` million
    characters, is refused (the upload answers 400 "Error inserting object in the database:
    " and this text). The content is never checked against the id."""
    if not isinstance(obj, dict):
        return None
    if obj.get("hash"):
        obj["id"] = obj["hash"]
    elif not obj.get("id"):
        obj["id"] = hashlib.md5(compact(obj)).hexdigest()
    object_id = obj["id"]
    if not isinstance(object_id, str) or len(object_id) != 32:
        return (f"Invalid object ID. Object ID: {object_id}. Object ID's must be hashes "
                "represented by a string of 32 characters.")
    size = len(compact(obj).decode()) / 1_000_000
    if size > limit_mb:
        return (f"Object too large. Object ID: {object_id}. ({size:g} MB is > than limit, "
                f"{limit_mb:g} MB)")
    return None


def too_large(size: int) -> bytes:
    return f"File size too large ({size} > {MAX_UPLOAD_BYTES})".encode()


class BadBody(Exception):
    """A request body the real server refuses with a ``UserInputError`` (HTTP 400)."""


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the user (``None``: anonymous), the token's scopes, the token."""

    user: User | None
    scopes: frozenset[str]
    token: str


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], app: SpeckleTestServer) -> None:
        self.app = app
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body leave at once: no 40 ms delayed-ACK stall
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.connections_lock:
            self.server.connections.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.connections_lock:
                self.server.connections.discard(self.connection)

    def do_GET(self) -> None:
        self.server.app.handle(self)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test output stays readable."""


class SpeckleTestServer:
    """A Speckle server for tests on ``127.0.0.1``; its data survives ``stop()``/``start()``.

    >>> with SpeckleTestServer() as server:
    ...     token = server.add_user("alice")
    ...     client = SpeckleClient(host=server.host, use_ssl=False)
    """

    def __init__(
        self,
        port: int = 0,
        *,
        rate_limit: RateLimit | None = None,
        users: Mapping[str, str] | None = None,
        bind: str = "127.0.0.1",
    ) -> None:
        """``users`` maps tokens to user names; ``rate_limit`` is off when ``None``."""
        self.store = Store()
        self.max_object_mb: float = MAX_OBJECT_SIZE_MB
        """The server's ``MAX_OBJECT_SIZE_MB`` (tests lower it to try big results cheaply)."""
        self.limiter = RateLimiter(rate_limit or RateLimit())
        self.log: list[Exchange] = []
        self._bind, self._port = bind, port
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        for token, name in (users or {}).items():
            self.add_user(name, token=token)

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, what ``SpeckleClient(host=..., use_ssl=False)`` takes."""
        return f"{self._bind}:{self._port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    @property
    def running(self) -> bool:
        return self._http is not None

    def start(self) -> SpeckleTestServer:
        """Listen (on the same port as before after a ``stop()``) and serve in a thread."""
        if self._http is None:
            self._http = _HTTPServer((self._bind, self._port), self)
            self._port = self._http.server_address[1]
            self._thread = threading.Thread(
                target=self._http.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"speckle-test-server-{self._port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection, as a crashed server would."""
        http, self._http = self._http, None
        if http is None:
            return
        http.shutdown()
        with http.connections_lock:
            for conn in list(http.connections):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        http.server_close()
        if self._thread:
            self._thread.join()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> SpeckleTestServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- configuration -------------------------------------------------------------------------

    def add_user(
        self,
        name: str,
        *,
        token: str | None = None,
        email: str | None = None,
        company: str | None = None,
        scopes: Iterable[str] = ALL_SCOPES,
    ) -> str:
        """Create a user (the first one is server admin) and return its token, which carries
        ``scopes`` (by default every scope a personal access token can have)."""
        token = token or secrets.token_hex(21)
        with self.store.lock:
            self.store.add_user(name, email or f"{name.lower()}@example.org", company, token,
                                scopes)
        return token

    def set_rate_limit(self, rate_limit: RateLimit | None) -> None:
        """Change the limits (``None``: none) and start every counter afresh."""
        self.limiter = RateLimiter(rate_limit or RateLimit())

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        """The middleware order of app.ts: first the rate limiter (modules/core/rest/
        ratelimiter.ts, see ratelimit.py), keyed by the token after its 10th character, else the
        client address (it runs before authentication, so never by user); then authentication
        as ``authContextMiddleware`` (modules/shared/middleware/index.ts): no token (or an empty
        one) is an anonymous request, an unknown token is refused with 403 ``{"error":"Your
        token is not valid."}``; then the route."""
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        path = urlsplit(req.path).path
        token = (req.headers.get("Authorization") or "").replace("Bearer ", "", 1)
        source = token[10:] or req.client_address[0]
        verdict = self.limiter.consume("graphql" if path == "/graphql" else "rest", source)
        if token.startswith("Bearer "):
            token = token.split(" ")[1]
        with self.store.lock:
            user = self.store.user_for_token(token) if token else None
            caller = Caller(user, self.store.scopes.get(token, frozenset()), token)
        operation = None
        if verdict and not verdict.allowed:
            reply = Reply(429, compact({"error": {"message": RATE_LIMITED,
                                                  "code": "RATE_LIMIT_ERROR"}}),
                          JSON_UTF8, headers=verdict.breach_headers())
        elif token and user is None:
            reply = Reply(403, INVALID_TOKEN, JSON_UTF8)
        else:
            try:
                reply, operation = self._route(req, path, body, caller,
                                               user.id if user else source)
            except Exception as exc:  # a bug in the test server: say so, keep serving
                reply = Reply(500, f"test server error: {exc!r}".encode(), "text/plain")
            if verdict:
                reply.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
        with self.store.lock:
            self.log.append(
                Exchange(req.command, path, operation, reply.status, user.name if user else None,
                         len(reply.body))
            )
        self._send(req, reply)

    def _send(self, req: BaseHTTPRequestHandler, reply: Reply) -> None:
        body = reply.body
        if reply.gzip and "gzip" in req.headers.get("Accept-Encoding", ""):
            body = gzip.compress(body)
            reply.headers["Content-Encoding"] = "gzip"
        req.send_response(reply.status)
        if reply.content_type:
            req.send_header("Content-Type", reply.content_type)
        for name, value in reply.headers.items():
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(body)))
        req.end_headers()
        req.wfile.write(body)

    def _route(
        self, req: BaseHTTPRequestHandler, path: str, body: bytes, caller: Caller, source: str
    ) -> tuple[Reply, str | None]:
        if req.command == "POST" and path == "/graphql":
            return self._graphql(body, caller, source)
        routes: list[tuple[str, str, Callable[..., Reply]]] = [
            ("POST", r"/api/diff/([^/]+)", self._diff),
            ("POST", r"/objects/([^/]+)", self._upload),
            ("POST", r"/api/getobjects/([^/]+)", self._get_objects),
            ("GET", r"/objects/([^/]+)/([^/]+)/single", self._single),
            ("GET", r"/objects/([^/]+)/([^/]+)", self._object_tree),
        ]
        for method, pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match and req.command == method:
                with self.store.lock:
                    try:
                        return handler(req, body, caller, *match.groups()), None
                    except BadBody as exc:  # defaultErrorHandler.ts (production: no stack)
                        error = {"message": str(exc), "code": "USER_INPUT_ERROR"}
                        return Reply(400, compact({"error": error}), JSON_UTF8), None
        return Reply(404, b"Not found", "text/plain"), None

    def _graphql(self, body: bytes, caller: Caller, source: str) -> tuple[Reply, str | None]:
        """``POST /graphql``: see graphql_api.py."""
        try:
            request = json.loads(body)
        except ValueError:
            error = {"message": "POST body is not JSON", "extensions": {"code": "BAD_REQUEST"}}
            return Reply(400, compact({"errors": [error]}), JSON_UTF8), None
        found = re.match(r"\s*(?:query|mutation)\s+(\w+)", request.get("query") or "")
        ctx = Context(self.store, caller.user, self.url, self.limiter, source, caller.scopes,
                      bool(caller.token))
        with self.store.lock:
            status, payload = execute(ctx, request)
        return Reply(status, compact(payload), JSON_UTF8), found and found.group(1)

    @staticmethod
    def _ids(body: bytes) -> list[str]:
        """The ``objects`` form field, a JSON array of ids; otherwise the ``UserInputError``
        that diffDownload.ts and diffUpload.ts throw (see ``_route``)."""
        try:
            ids = json.loads(parse_qs(body.decode())["objects"][0])
        except (KeyError, ValueError):
            raise BadBody(BAD_IDS) from None
        return list(ids)

    def _diff(self, req: Any, body: bytes, caller: Caller, project_id: str) -> Reply:
        """``POST /api/diff/:streamId`` (modules/core/rest/diffUpload.ts): write permission
        (401 with no body otherwise), then ``{id: stored?}`` in the order asked, gzip,
        ``application/json`` whatever Accept says."""
        denied = self.store.write_denied(project_id, caller.user, caller.scopes)
        if denied:
            return Reply(denied)
        stored = self.store.objects[project_id]
        answer = {object_id: object_id in stored for object_id in self._ids(body)}
        return Reply(200, compact(answer), "application/json", gzip=True)

    def _upload(self, req: Any, body: bytes, caller: Caller, project_id: str) -> Reply:
        """``POST /objects/:streamId`` (modules/core/rest/upload.ts): write permission (401),
        then each multipart file by its mime type: ``application/gzip`` is gunzipped,
        ``text/plain``, ``application/json`` and ``application/octet-stream`` are read as
        they are, any other type is a 400; a batch over ``MAX_UPLOAD_BYTES`` is a 413; a batch
        that is not JSON, or not an array, a 400, and so is an object with a bad id or over
        ``max_object_mb`` (:func:`object_problem`); all stored: 201, no body. An id already
        stored keeps its first content (``ON CONFLICT IGNORE``)."""
        denied = self.store.write_denied(project_id, caller.user, caller.scopes)
        if denied:
            return Reply(denied)
        head = f"Content-Type: {req.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            return Reply(400, UPLOAD_NOT_MULTIPART, HTML_UTF8)
        batches = []
        for part in message.iter_parts():  # type: ignore[attr-defined]
            data = part.get_payload(decode=True)
            mime = part.get_content_type()
            if mime == "application/gzip":
                if len(data) > MAX_UPLOAD_BYTES:
                    return Reply(413, too_large(len(data)), HTML_UTF8)
                data = gzip.decompress(data)
            elif mime not in ("text/plain", "application/json", "application/octet-stream"):
                return Reply(400, UPLOAD_BAD_TYPE, HTML_UTF8)
            if len(data) > MAX_UPLOAD_BYTES:
                return Reply(413, too_large(len(data)), HTML_UTF8)
            try:
                batch = json.loads(data)
            except ValueError:
                text = b"" if mime == "application/gzip" else b" Batch is not in JSON format."
                return Reply(400, b"Failed to parse data." + text, HTML_UTF8)
            if not isinstance(batch, list):
                return Reply(400, UPLOAD_NOT_ARRAY, HTML_UTF8)
            for obj in batch:
                problem = object_problem(obj, self.max_object_mb)
                if problem:
                    text = f"Error inserting object in the database: {problem}"
                    return Reply(400, text.encode(), HTML_UTF8)
            batches.append(batch)
        for batch in batches:
            self.store.save_objects(project_id, (jsonb(obj) for obj in batch))
        return Reply(201)

    def _get_objects(self, req: Any, body: bytes, caller: Caller, project_id: str) -> Reply:
        """``POST /api/getobjects/:streamId`` (modules/core/rest/diffDownload.ts): read
        permission (its status, no body), then the stored objects among those asked, ordered
        by id within each run of 1000 asked ids (``getObjectsStreamFactory`` orders by id),
        unknown ids left out, in the form ``SpeckleObjectsStream`` writes (see ``_objects``)."""
        denied = self.store.read_denied(project_id, caller.user, caller.scopes)
        if denied:
            return Reply(denied)
        stored = self.store.objects[project_id]
        ids = self._ids(body)
        found = []
        for start in range(0, len(ids), 1000):
            found += sorted({i for i in ids[start:start + 1000] if i in stored})
        return self._objects(req, [(i, stored_text(stored[i])) for i in found])

    @staticmethod
    def _objects(req: Any, objects: list[tuple[str, str]]) -> Reply:
        """``SpeckleObjectsStream`` (modules/core/rest/speckleObjectsStream.ts): when the
        Accept header is exactly ``text/plain``, ``id<TAB>text<NEWLINE>`` per object with
        ``text/plain; charset=UTF-8``; otherwise (any other Accept, none at all, or a list
        such as ``text/plain, */*``) the texts joined by commas in ``[...]``, with
        ``application/json``. Always gzip-encoded."""
        if req.headers.get("Accept") == "text/plain":
            lines = "".join(f"{object_id}\t{text}\n" for object_id, text in objects)
            return Reply(200, lines.encode(), "text/plain; charset=UTF-8", gzip=True)
        array = "[" + ",".join(text for _, text in objects) + "]"
        return Reply(200, array.encode(), "application/json", gzip=True)

    def _single(
        self, req: Any, body: bytes, caller: Caller, project_id: str, object_id: str
    ) -> Reply:
        """``GET /objects/:streamId/:objectId/single`` (modules/core/rest/download.ts): read
        permission, 404 ``Failed to find object.``, else ``res.send(obj.data)``: the object
        re-serialised compactly with the ``totalChildrenCount`` column (null), not gzipped,
        whatever Accept says."""
        denied = self.store.read_denied(project_id, caller.user, caller.scopes)
        if denied:
            return Reply(denied)
        obj = self.store.objects[project_id].get(object_id)
        if obj is None:
            return Reply(404, b"Failed to find object.", HTML_UTF8)
        return Reply(200, compact(formatted(obj)), JSON_UTF8)

    def _object_tree(
        self, req: Any, body: bytes, caller: Caller, project_id: str, object_id: str
    ) -> Reply:
        """``GET /objects/:streamId/:objectId`` (modules/core/rest/download.ts): read
        permission, 404 ``Failed to find object.``, else the object first (re-serialised as
        ``_single`` does) and then every child of its ``__closure`` that is stored, ordered by
        id (``getObjectChildrenStreamFactory``), negotiated as ``getobjects`` is."""
        denied = self.store.read_denied(project_id, caller.user, caller.scopes)
        if denied:
            return Reply(denied)
        stored = self.store.objects[project_id]
        if object_id not in stored:
            return Reply(404, b"Failed to find object.", HTML_UTF8)
        root = (object_id, compact(formatted(stored[object_id])).decode())
        children = sorted(i for i in stored[object_id].get("__closure", {}) if i in stored)
        return self._objects(req, [root, *((i, stored_text(stored[i])) for i in children)])
