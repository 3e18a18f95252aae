"""The metrics port (``--metrics-port``): Prometheus metrics and the live
dashboard, over HTTP (HTTPS with ``--tls-cert``), in the server's own loop.

::

    GET /metrics       prometheus_client's text format, from PoolMetrics' registry
    GET /              the dashboard page (pool_server/dashboard/), which reads
    GET /events        a JSON snapshot a second, as server-sent events
    GET /state         the same snapshot once, for scripts

It listens on the gRPC port's ``--host`` and takes the same tokens: with
``--auth token`` every path needs one, as ``Authorization: Bearer <token>``
(401 without one, 403 for one not accepted), or once as ``?token=`` on any
page, which sets an HttpOnly, SameSite=Strict cookie holding it and
redirects to the same URL without it, so a browser needs the token in its
address bar only once. ``--auth none`` needs none. With ``--tls-cert`` the
port serves TLS with the same certificate (picked up again within a second
of its files changing, as on the gRPC port), and with ``--tls-client-ca``
asks for client certificates too. The access log is off: a ``?token=``
URL must never reach a log.

Nothing here blocks the loop: a scrape reads the pool's own counters and
each worker's ``/proc/<pid>/statm``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import ssl
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from pool_server.auth import UNAUTHENTICATED_CALLER, Caller, TokenStore
from pool_server.config import ServerConfig
from pool_server.dashboard import Activity, page_file
from pool_server.metrics import PoolMetrics
from pool_server.supervisor import WorkerPool
from pool_server.tls import TlsFiles, TlsSetupError
from pool_server.tracker import JobTracker

log = logging.getLogger("pool_server.web")

COOKIE_NAME = "pool_token"
TOKEN_PARAMETER = "token"

# How often the certificate files are looked at for a renewal (as tls.py's).
TLS_CHECK_INTERVAL_S = 1.0

# How long a browser waits before it reconnects a dropped event stream.
EVENTS_RETRY_MS = 2000

_NEEDS_TOKEN = (
    "this pool-server's metrics port requires a token: send 'Authorization: Bearer <token>', "
    "or open /?token=<token> once in a browser; on the server's machine `pool-server token` "
    "prints it"
)
_TOKEN_REFUSED = (
    "this pool-server does not accept the token sent (it may have been rotated); "
    "`pool-server token` prints the current one"
)

# The page loads only its own files and talks only to this origin.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'",
    "Cache-Control": "no-store",
}
_PAGE_FILES = {
    "/": ("index.html", "text/html"),
    "/dashboard.js": ("dashboard.js", "text/javascript"),
    "/dashboard.css": ("dashboard.css", "text/css"),
}

# Who sent the request being handled: set by the auth middleware, which runs
# in the handler's task (as auth.py's interceptor does for gRPC).
_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("pool_server_web_caller")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class MetricsPort:
    """The running HTTP side; :meth:`close` stops it."""

    def __init__(self, activity: Activity) -> None:
        self._activity = activity
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.closing = False
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    async def open(
        cls,
        config: ServerConfig,
        tokens: TokenStore | None,
        metrics: PoolMetrics,
        pool: WorkerPool,
        tracker: JobTracker,
    ) -> MetricsPort:
        """Listen on ``config.metrics_port``; OSError if it cannot be bound,
        TlsSetupError if the certificate cannot be read."""
        assert config.metrics_port is not None
        certificate = _Certificate(config.tls) if config.tls is not None else None
        metrics.watch(pool, tracker)
        activity = Activity(pool, tracker)
        activity.watch()
        served = cls(activity)
        app = web.Application(middlewares=[_authenticate(tokens, secure=certificate is not None)])
        served._route(app, metrics)
        served._runner = runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = certificate.context if certificate is not None else None
        site = web.TCPSite(runner, config.host, config.metrics_port, ssl_context=context)
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        served.url = f"{'https' if certificate is not None else 'http'}://{host}:{port}/"
        served._tasks.append(asyncio.create_task(activity.sample_forever(), name="dashboard"))
        if certificate is not None:
            served._tasks.append(asyncio.create_task(certificate.renew_forever(), name="web-tls"))
        log.info("metrics and dashboard on %s", served.url)
        return served

    def _route(self, app: web.Application, metrics: PoolMetrics) -> None:
        router = app.router
        router.add_get("/metrics", _metrics_handler(metrics))
        router.add_get("/state", self._state)
        router.add_get("/events", self._events)
        for path, (name, content_type) in _PAGE_FILES.items():
            router.add_get(path, _page_handler(page_file(name), content_type))

    async def _state(self, request: web.Request) -> web.Response:
        return web.json_response(
            self._activity.snapshot(_caller.get()), headers={"Cache-Control": "no-store"}
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """A snapshot now and after every tick, until the viewer or the server goes."""
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-store"}
        )
        await response.prepare(request)
        caller = _caller.get()
        with contextlib.suppress(ConnectionError):  # the viewer went away
            await response.write(f"retry: {EVENTS_RETRY_MS}\n\n".encode())
            while not self.closing:
                snapshot = json.dumps(self._activity.snapshot(caller), separators=(",", ":"))
                await response.write(f"data: {snapshot}\n\n".encode())
                await asyncio.shield(self._activity.next_tick())  # shared by every viewer
        return response

    async def close(self) -> None:
        self.closing = True
        self._activity.wake()  # event streams see `closing` and end
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()


def _authenticate(tokens: TokenStore | None, *, secure: bool) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if tokens is None:  # --auth none
            _caller.set(UNAUTHENTICATED_CALLER)
            return await handler(request)
        offered = request.query.get(TOKEN_PARAMETER)
        if offered is not None:
            if tokens.caller(offered) is None:
                return _refusal(403, _TOKEN_REFUSED)
            kept = [(k, v) for k, v in request.query.items() if k != TOKEN_PARAMETER]
            response = web.HTTPSeeOther(location=str(request.rel_url.with_query(kept)))
            response.set_cookie(
                COOKIE_NAME, offered, httponly=True, samesite="Strict", secure=secure, path="/"
            )
            return response
        secret = _bearer(request.headers.get("Authorization"))
        if secret is None:
            secret = request.cookies.get(COOKIE_NAME) or None
        if secret is None:
            return _refusal(401, _NEEDS_TOKEN)
        caller = tokens.caller(secret)
        if caller is None:
            return _refusal(403, _TOKEN_REFUSED)
        _caller.set(caller)
        return await handler(request)

    return authenticate


def _bearer(header: str | None) -> str | None:
    """The token of an ``Authorization: Bearer`` header (the scheme in any case)."""
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def _refusal(status: int, message: str) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="pool-server"'} if status == 401 else {}
    return web.Response(status=status, text=message + "\n", headers=headers)


def _metrics_handler(metrics: PoolMetrics) -> Handler:
    async def serve_metrics(request: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    return serve_metrics


def _page_handler(body: bytes, content_type: str) -> Handler:
    async def serve_page(request: web.Request) -> web.Response:
        return web.Response(body=body, content_type=content_type, headers=_PAGE_HEADERS)

    return serve_page


class _Certificate:
    """The port's TLS context, its certificate loaded again when its files change."""

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        if files.client_ca is not None:  # mutual TLS, as on the gRPC port
            self.context.verify_mode = ssl.CERT_REQUIRED
        try:
            self._stamps = self._mtimes()
            self._load()
        except (ssl.SSLError, OSError) as e:
            raise TlsSetupError(f"cannot serve TLS on the metrics port: {e}") from None

    def _mtimes(self) -> tuple[int, ...]:
        return tuple(path.stat().st_mtime_ns for path in self._files.paths())

    def _load(self) -> None:
        self.context.load_cert_chain(self._files.cert, self._files.key)
        if self._files.client_ca is not None:
            self.context.load_verify_locations(self._files.client_ca)

    async def renew_forever(self) -> None:
        while True:
            await asyncio.sleep(TLS_CHECK_INTERVAL_S)
            self.renew()

    def renew(self) -> None:
        """Load the files again if they changed; keep the current ones if they cannot be."""
        try:
            stamps = self._mtimes()
            if stamps == self._stamps:
                return
            self._load()
        except (ssl.SSLError, OSError) as e:
            log.error("kept the metrics port's current TLS certificate: %s", e)
            return
        self._stamps = stamps
        log.info("TLS certificate files changed: the metrics port serves the new certificate")
