"""Health endpoints: ``/healthz`` (the process and its event loop answer), ``/readyz``
(consumer bound, connection up, the pull engine hearing from the server, what amebus must
publish being stored) and ``/metrics``.

Served by :meth:`Health.serve_http` (a small HTTP/1.1 server on the event loop, what
``amebus run --metrics HOST:PORT`` starts) or mounted on an existing ASGI application through
:meth:`Health.asgi_app`. No web framework is needed for either.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

from amebus._text import safe_text
from amebus.telemetry.observer import BaseObserver, Serving

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.handlers import Handler
    from amebus.telemetry.metrics import Metrics
    from amebus.tracing import Decision, Failure

__all__ = ["ASGIApp", "Health"]

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]
"""An ASGI 3 application callable."""

_JSON = "application/json"
_REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}


class Health(BaseObserver):
    """Readiness of one serving service, and the HTTP endpoints that report it.

    Args:
        metrics: served on ``/metrics`` (its registry); without it ``/metrics`` is 404.
        stall_periods: readiness fails when the pull engine has pull requests out and has heard
            nothing (no message, no idle heartbeat) for this many heartbeat periods.
    """

    def __init__(self, metrics: Metrics | None = None, *, stall_periods: float = 3.0) -> None:
        self.metrics = metrics
        self.stall_periods = stall_periods
        self._serving: Serving | None = None
        self._refused: str | None = None  # the last publish amebus had to make that failed

    def failed(self, failure: Failure) -> None:
        """A result-event or dead-letter publish failed (the message is kept for redelivery):
        not ready until a later one is stored."""
        if failure.stage == "post-process":
            self._refused = safe_text(failure.error, 200)

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """A handler's ack (its result events stored) or a stored dead-letter copy: publishing
        works again."""
        if self._refused is not None and handler is not None and (
                decision.action == "ack" or (decision.action == "term" and decision.dead_letter)):
            self._refused = None

    async def start(self, serving: Serving) -> None:
        """The consumer is bound: readiness checks it from now on."""
        self._serving = serving

    async def stop(self) -> None:
        """Serving ended: not ready any more."""
        self._serving = None

    def readiness(self) -> dict[str, Any]:
        """``{"ready": bool, "checks": {name: {"ok": bool, "detail": str}}}``."""
        serving = self._serving
        checks: dict[str, dict[str, Any]] = {}
        if serving is None:
            checks["consumer"] = {"ok": False, "detail": "not serving"}
        else:
            puller = serving.puller
            checks["consumer"] = {"ok": not puller.closed and puller.error is None,
                                  "detail": f"{serving.stream}/{serving.durable}"
                                  + (f": {puller.error}" if puller.error is not None else "")}
            replacing = puller.health.replacing  # found dead (half-open), being replaced
            connected = serving.nc.is_connected and not replacing
            checks["connection"] = {"ok": connected, "detail": "connected" if connected else (
                "found dead, reconnecting" if replacing else "disconnected")}
            silent = time.monotonic() - puller.heard_at
            limit = self.stall_periods * puller.heartbeat
            stalled = silent > limit and puller.pending > 0
            checks["receiving"] = {"ok": not stalled, "detail": (
                f"nothing heard for {silent:.1f}s with requests out (limit {limit:g}s)"
                if stalled else f"last heard {silent:.1f}s ago")}
            refused = self._refused
            checks["publishing"] = {"ok": refused is None, "detail": (
                "result events and dead letters are stored" if refused is None else
                f"a publish amebus needs failed ({refused}); the message is kept for "
                f"redelivery")}
        return {"ready": all(c["ok"] for c in checks.values()), "checks": checks}

    def respond(self, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for a GET of ``path``."""
        if path == "/healthz":
            return 200, "text/plain; charset=utf-8", b"ok\n"
        if path == "/readyz":
            report = self.readiness()
            return (200 if report["ready"] else 503), _JSON, json.dumps(report).encode() + b"\n"
        if path == "/metrics" and self.metrics is not None:
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        return 404, "text/plain; charset=utf-8", b"not found: try /healthz, /readyz, /metrics\n"

    def asgi_app(self) -> ASGIApp:
        """An ASGI application serving ``/healthz``, ``/readyz`` and ``/metrics``; mount it
        (e.g. Starlette ``Mount("/ops", health.asgi_app())``): paths are read below the
        scope's ``root_path``."""

        async def app(scope: Scope, receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
                return
            if scope["type"] != "http":
                return
            path, root = scope["path"], scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root):] or "/"
            status, ctype, body = (self.respond(path) if scope["method"] in ("GET", "HEAD")
                                   else (405, "text/plain", b"GET only\n"))
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", ctype.encode()),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body",
                        "body": body if scope["method"] == "GET" else b""})

        return app

    async def serve_http(self, host: str, port: int) -> asyncio.Server:
        """Serve the endpoints over HTTP on ``host:port`` (0: any free port) until the
        returned server is closed. One request per connection, GET and HEAD only."""
        return await asyncio.start_server(self._on_connection, host, port)

    async def _on_connection(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
            path = rest.partition(" ")[0].partition("?")[0]
            status, ctype, body = (self.respond(path) if method in ("GET", "HEAD")
                                   else (405, "text/plain", b"GET only\n"))
            writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, '')}\r\n"
                         f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (body if method == "GET"
                                                                  else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, UnicodeError) as exc:
            log.debug("health request failed: %r", exc)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
