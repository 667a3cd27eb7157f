"""The Speckle-compatible test server: GraphQL and the object REST endpoints over a threaded
standard-library HTTP server, answering the way the recorded real server did.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import gzip
import json
import re
import secrets
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .graphql_api import RATE_LIMITED, Context, execute
from .ratelimit import RateLimit, RateLimiter
from .store import Store, User

INVALID_TOKEN = b'{"error":"Your token is not valid."}'
JSON_UTF8 = "application/json; charset=utf-8"


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


def jsonb(value: Any) -> Any:
    """Reorder object keys the way PostgreSQL ``jsonb`` stores them (shorter keys first)."""
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return {k: jsonb(value[k]) for k in keys}
    if isinstance(value, list):
        return [jsonb(v) for v in value]
    return value


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


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
    ) -> str:
        """Create a user (the first one is server admin) and return its token."""
        token = token or secrets.token_hex(21)
        with self.store.lock:
            self.store.add_user(name, email or f"{name.lower()}@example.org", company, token)
        return token

    def set_rate_limit(self, rate_limit: RateLimit | None) -> None:
        """Change the limits (``None``: none) and start every counter afresh."""
        self.limiter = RateLimiter(rate_limit or RateLimit())

    # -- HTTP ----------------------------------------------------------------------------------

    def handle(self, req: BaseHTTPRequestHandler) -> None:
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        path = urlsplit(req.path).path
        auth = req.headers.get("Authorization")
        with self.store.lock:
            user = self.store.user_for_token(auth.removeprefix("Bearer ").strip()) if auth else None
        operation = None
        if auth and user is None:
            reply = Reply(403, INVALID_TOKEN, JSON_UTF8)
        else:
            source = user.id if user else req.client_address[0]
            verdict = self.limiter.consume("graphql" if path == "/graphql" else "rest", source)
            if verdict and not verdict.allowed:
                headers = {"Retry-After": verdict.retry_after_header}
                reply = Reply(429, compact({"error": RATE_LIMITED}), JSON_UTF8, False, headers)
            else:
                try:
                    reply, operation = self._route(req, path, body, user, source)
                except Exception as exc:  # a bug in the test server: say so, keep serving
                    reply = Reply(500, f"test server error: {exc!r}".encode(), "text/plain")
                if verdict:
                    reply.headers["X-RateLimit-Remaining"] = str(verdict.remaining)
        with self.store.lock:
            self.log.append(
                Exchange(req.command, path, operation, reply.status, user.name if user else None)
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
        self, req: BaseHTTPRequestHandler, path: str, body: bytes, user: User | None, source: str
    ) -> tuple[Reply, str | None]:
        if req.command == "POST" and path == "/graphql":
            return self._graphql(body, user, source)
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
                    return handler(req, body, user, *match.groups()), None
        return Reply(404, b"Not found", "text/plain"), None

    def _graphql(self, body: bytes, user: User | None, source: str) -> tuple[Reply, str | None]:
        try:
            request = json.loads(body)
        except ValueError:
            error = {"message": "POST body is not JSON", "extensions": {"code": "BAD_REQUEST"}}
            return Reply(400, compact({"errors": [error]}), JSON_UTF8), None
        found = re.match(r"\s*(?:query|mutation)\s+(\w+)", request.get("query") or "")
        ctx = Context(self.store, user, self.url, self.limiter, source)
        with self.store.lock:
            status, payload = execute(ctx, request)
        return Reply(status, compact(payload), JSON_UTF8), found and found.group(1)

    @staticmethod
    def _ids(body: bytes) -> list[str]:
        return list(json.loads(parse_qs(body.decode())["objects"][0]))

    def _diff(self, req: Any, body: bytes, user: User | None, project_id: str) -> Reply:
        if not self.store.can_write(project_id, user):
            return Reply(401)
        stored = self.store.objects[project_id]
        answer = {object_id: object_id in stored for object_id in self._ids(body)}
        return Reply(200, compact(answer), "application/json", gzip=True)

    def _upload(self, req: Any, body: bytes, user: User | None, project_id: str) -> Reply:
        if not self.store.can_write(project_id, user):
            return Reply(401)
        head = f"Content-Type: {req.headers.get('Content-Type', '')}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        for part in message.iter_parts():  # type: ignore[attr-defined]
            data = part.get_payload(decode=True)
            if data[:2] == b"\x1f\x8b":
                data = gzip.decompress(data)
            self.store.save_objects(project_id, (jsonb(obj) for obj in json.loads(data)))
        return Reply(201)

    def _get_objects(self, req: Any, body: bytes, user: User | None, project_id: str) -> Reply:
        if project_id not in self.store.projects:
            return Reply(404)
        if not self.store.can_read(project_id, user):
            return Reply(401)
        stored = self.store.objects[project_id]
        found = [stored[i] for i in self._ids(body) if i in stored]
        return self._objects_reply(req, found)

    @staticmethod
    def _objects_reply(req: Any, objects: list[dict[str, Any]]) -> Reply:
        """``id<TAB>json`` lines (jsonb's text form) when Accept is exactly ``text/plain``,
        otherwise a JSON array (diffDownload.ts compares the whole header with that string)."""
        if req.headers.get("Accept", "") != "text/plain":
            return Reply(200, compact(objects), "application/json", gzip=True)
        lines = "".join(f"{o['id']}\t{json.dumps(o, ensure_ascii=False)}\n" for o in objects)
        return Reply(200, lines.encode(), "text/plain; charset=UTF-8", gzip=True)

    def _single(
        self, req: Any, body: bytes, user: User | None, project_id: str, object_id: str
    ) -> Reply:
        if not self.store.can_read(project_id, user):
            return Reply(401)
        obj = self.store.objects[project_id].get(object_id)
        if obj is None:
            return Reply(404, b"Failed to find object.", "text/html; charset=utf-8")
        return Reply(200, compact(jsonb({**obj, "totalChildrenCount": None})), JSON_UTF8)

    def _object_tree(
        self, req: Any, body: bytes, user: User | None, project_id: str, object_id: str
    ) -> Reply:
        """The object and every child in its ``__closure``."""
        if not self.store.can_read(project_id, user):
            return Reply(401)
        stored = self.store.objects[project_id]
        if object_id not in stored:
            return Reply(404, b"Failed to find object.", "text/html; charset=utf-8")
        ids = [object_id, *stored[object_id].get("__closure", {})]
        return self._objects_reply(req, [stored[i] for i in ids if i in stored])
