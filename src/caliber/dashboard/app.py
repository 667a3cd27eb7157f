"""The dashboard's web app (Starlette): HTML pages, the JSON endpoints the pages poll, the
plots, the actions and the events of ended workloads, for one queue
(:class:`~caliber.queue.target.QueueTarget`).

Security (docs/dashboard.md): every request carries the dashboard's token (in the address
the command prints, then in a cookie, HttpOnly and SameSite=Strict); without it the answer is
401 and nothing of the queue. An action (cancel, retry) is a POST that must also carry the
page's anti-forgery value in a header, from the same origin. Pages never put a stored string
into HTML unescaped (Jinja2 autoescaping; the scripts set ``textContent``), and a strict
Content-Security-Policy allows only the app's own scripts and styles.
"""

from __future__ import annotations

import hmac
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from caliber.dashboard import data
from caliber.errors import CaliberError, NotFoundError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from caliber.queue.target import QueueTarget

HERE = Path(__file__).parent
COOKIE = "caliber_dashboard"
CSRF_HEADER = "x-caliber-csrf"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")


class Guard(BaseHTTPMiddleware):
    """The token on every request, the anti-forgery value and origin on every POST, and the
    security headers on every answer."""

    def __init__(self, app: Any, token: str, csrf: str) -> None:
        super().__init__(app)
        self.token = token
        self.csrf = csrf

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        given = request.query_params.get("token")
        if given is not None and hmac.compare_digest(given, self.token):
            # From the printed address: keep it in a cookie, and drop it from the address bar.
            answer: Response = RedirectResponse(request.url.remove_query_params("token"), 303)
            answer.set_cookie(COOKIE, self.token, httponly=True, samesite="strict")
            return _headers(answer)
        cookie = request.cookies.get(COOKIE, "")
        if not hmac.compare_digest(cookie, self.token):
            return _headers(PlainTextResponse(
                "this Caliber dashboard needs its token: open the address "
                "'caliber dashboard' printed (with ?token=...)\n", 401))
        if request.method not in ("GET", "HEAD"):
            origin = request.headers.get("origin")
            same = origin is None or origin == f"{request.url.scheme}://{request.url.netloc}"
            if not same or not hmac.compare_digest(request.headers.get(CSRF_HEADER, ""),
                                                   self.csrf):
                return _headers(PlainTextResponse("forbidden: not from this dashboard\n", 403))
        return _headers(await call_next(request))


def _headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers.setdefault("Cache-Control", "no-store")
    return response


def _error(exc: CaliberError) -> JSONResponse:
    status = 404 if isinstance(exc, NotFoundError) else 400
    return JSONResponse({"error": str(exc)}, status)


def make_app(target: QueueTarget, *, token: str, csrf: str | None = None) -> Starlette:
    """The dashboard of ``target``, answering only requests with ``token``."""
    csrf = csrf or secrets.token_urlsafe(24)
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))

    def page(name: str, **values: Any) -> Callable[[Request], Awaitable[Response]]:
        async def render(request: Request) -> Response:
            html = env.get_template(name).render(
                csrf=csrf, location=target.location, kind=target.kind,
                params=dict(request.path_params), events=data.EVENTS, **values)
            return HTMLResponse(html)
        return render

    def api(work: Callable[..., Any]) -> Callable[[Request], Awaitable[Response]]:
        async def answer(request: Request) -> Response:
            try:
                result = await run_in_threadpool(work, request)
            except CaliberError as exc:
                return _error(exc)
            if isinstance(result, Response):
                return result
            return JSONResponse(result)
        return answer

    def int_param(request: Request, name: str, default: int) -> int:
        try:
            return max(0, int(request.query_params.get(name, default)))
        except ValueError:
            return default

    def queue(request: Request) -> Any:
        q = request.query_params
        return data.queue_page(target, status=q.get("status") or None,
                               pinion=q.get("pinion") or None,
                               workflow=q.get("workflow") or None,
                               offset=int_param(request, "offset", 0))

    def workload(request: Request) -> Any:
        return data.workload(target, request.path_params["id"])

    def diagram(request: Request) -> Any:
        return Response(data.diagram(target, request.path_params["id"]),
                        media_type="image/svg+xml")

    def timeline(request: Request) -> Any:
        drawn = data.timeline(target, request.path_params["id"])
        if drawn is None:
            return JSONResponse({"error": "no results yet"}, 404)
        return Response(drawn, media_type="image/svg+xml")

    def output(request: Request) -> Any:
        return data.output(target, request.path_params["id"], int_param(request, "offset", 0))

    def results(request: Request) -> Any:
        return data.results(target, request.path_params["id"])

    def chart(request: Request) -> Any:
        drawn = data.chart(target, request.path_params["id"], request.path_params["which"])
        if drawn is None:
            return JSONResponse({"error": "nothing to plot"}, 404)
        return Response(drawn, media_type="image/svg+xml")

    def result_file(request: Request) -> Any:
        from caliber.results.api import get_results

        found = get_results(results_id=request.path_params["id"], target=target)
        name = request.path_params["name"]
        stream = found.open_file(name)

        def chunks() -> Iterator[bytes]:
            with stream:
                while block := stream.read(1 << 20):
                    yield block

        filename = name.rsplit("/", 1)[-1].replace('"', "")
        return StreamingResponse(chunks(), media_type="application/octet-stream", headers={
            "Content-Disposition": f'attachment; filename="{filename}"'})

    def pinions(request: Request) -> Any:
        return data.pinions(target)

    def events(request: Request) -> Any:
        return data.events(target, int_param(request, "limit", data.EVENTS))

    async def action(request: Request) -> Response:
        try:
            done = await run_in_threadpool(data.act, target, request.path_params["id"],
                                           request.path_params["action"])
        except CaliberError as exc:
            return _error(exc)
        return JSONResponse(done)

    routes = [
        Route("/", page("queue.html")),
        Route("/workload/{id}", page("workload.html")),
        Route("/results/{id}", page("results.html")),
        Route("/events", page("events.html")),
        Route("/api/queue", api(queue)),
        Route("/api/pinions", api(pinions)),
        Route("/api/events", api(events)),
        Route("/api/workload/{id}", api(workload)),
        Route("/api/workload/{id}/diagram.svg", api(diagram)),
        Route("/api/workload/{id}/output", api(output)),
        Route("/api/workload/{id}/timeline.svg", api(timeline)),
        Route("/api/workload/{id}/{action}", action, methods=["POST"]),
        Route("/api/results/{id}", api(results)),
        Route("/api/results/{id}/chart/{which}.svg", api(chart)),
        Route("/api/results/{id}/files/{name:path}", api(result_file)),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Starlette(routes=routes, middleware=[Middleware(Guard, token=token, csrf=csrf)])
