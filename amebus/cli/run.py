"""``amebus run``: serve a service until SIGINT/SIGTERM, with a status line (in place on a
terminal, a log line otherwise) and an embedded nats-server when no server is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

from amebus.cli.connect import close, connect, jetstream_error, server_url
from amebus.cli.console import AboveStatus, Console
from amebus.cli.load import USAGE, CommandError, load_service, say
from amebus.errors import AmebusError
from amebus.routing import durable_name
from amebus.service import Service

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from amebus.server import NatsServer

__all__ = ["AboveStatus", "Console", "embedded_server", "run"]

log = logging.getLogger("amebus.cli")


def _status_line(service: Service, rate: float, pending: str) -> str:
    stats = service.stats
    total = stats.total()
    skipped = f" | skipped {stats.skipped}" if stats.skipped else ""
    lost = (f" | connection lost {stats.disconnects}x ({stats.dead_connections} found dead)"
            if stats.disconnects or stats.dead_connections else "")
    if not stats.connected:
        lost += " | NOT CONNECTED"
    return (f"{rate:.1f} msg/s | acked {total.acked} | naked {total.naked} | termed "
            f"{total.termed} | dead-lettered {total.dead_lettered}{skipped} | in flight "
            f"{stats.in_flight} | pending {pending}{lost}")


async def _report_status(service: Service, js: JetStreamContext, stream: str, durable: str,
                         every: float, console: Console | None) -> None:
    last_at, last_handled = time.monotonic(), service.stats.total().handled
    pending, pending_at = "?", 0.0
    while True:
        await asyncio.sleep(every)
        now = time.monotonic()
        handled = service.stats.total().handled
        rate = (handled - last_handled) / max(now - last_at, 1e-9)
        last_at, last_handled = now, handled
        if now - pending_at >= 5:
            pending_at = now
            try:
                info = await asyncio.wait_for(js.consumer_info(stream, durable), 2)
                pending = str(info.num_pending)
            except Exception:
                pending = "?"
        line = _status_line(service, rate, pending)
        if console is not None:
            console.show(line)
        else:
            log.info("%s", line)


_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Stopper:
    """SIGINT/SIGTERM/SIGHUP: the first cancels serving (graceful), the second exits at once.

    SIGHUP is the terminal closing: the handlers get the same graceful stop as for Ctrl-C.
    """

    def __init__(self, console: Console | None, shutdown_timeout: float) -> None:
        self.console = console
        self.shutdown_timeout = shutdown_timeout
        self.server: NatsServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.signum = 0
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> _Stopper:
        for signum in _SIGNALS:
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum in _SIGNALS:
            self._loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        # Act first, then tell: writing to stderr may fail (say() and the console survive it).
        name = signal.Signals(signum).name
        if self.signum:  # the second signal: unsettled messages come back after ack_wait
            if self.server is not None:
                self.server.stop_sync(1.0)
            if self.console is not None:
                self.console.end()
            say(f"{name} again: stopping at once; messages not settled are redelivered "
                 f"after ack_wait")
            with contextlib.suppress(OSError, ValueError):
                sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        if self.task is not None:
            self.task.cancel()
        if self.console is not None:
            self.console.end()
        say(f"{name}: stopping; running handlers get up to {self.shutdown_timeout:g}s (send "
             f"it again to stop at once)")


async def run(args: argparse.Namespace, console: Console | None) -> int:
    """``amebus run``: serve the service ``args.target`` names until a signal; the exit code."""
    service = load_service(args.target)
    cls = type(service)
    with _Stopper(console, cls.shutdown_timeout) as stopper:
        return await _run_with(service, args, console, stopper)


async def _run_with(service: Service, args: argparse.Namespace, console: Console | None,
                    stopper: _Stopper) -> int:
    cls = type(service)
    overrides: dict[str, Any] = {}
    for name in ("concurrency", "stream", "durable", "provision"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    url = server_url(args)
    if url is not None and args.store is not None:
        msg = "--store is for the embedded server; it has no effect with --server or NATS_URL"
        raise CommandError(msg, USAGE)
    server: NatsServer | None = None
    if url is None:
        server = stopper.server = await embedded_server(args.store)
        url = server.url
        say(f"no --server or NATS_URL: started an embedded nats-server at {url}, store "
             f"{server.store_dir}")
    try:
        from amebus.permissions import inbox_prefix

        nc = await connect(url, args, name=f"amebus {cls.__name__}",
                           inbox_prefix=inbox_prefix(cls))
        try:
            if stopper.signum:  # stopped while starting
                return 0
            return await _serve(service, nc, url, overrides, args, console, stopper)
        finally:
            await close(nc)
    finally:
        if server is not None:
            await server.stop()


async def embedded_server(store: str | None) -> NatsServer:
    """Start the nats-server ``amebus run`` embeds when no server is given (shared by the
    workers of ``--workers N``); its store in ``store``, else a temporary folder."""
    from amebus.cli.embedded import EmbeddedServer

    try:
        server = EmbeddedServer(store_dir=store, name="amebus-embedded")
        server.start_sync()  # in the main thread, which the server's death signal follows
    except FileNotFoundError as exc:
        msg = f"no --server or NATS_URL, and no nats-server to embed: {exc}"
        raise CommandError(msg, USAGE) from None
    except (RuntimeError, TimeoutError) as exc:
        msg = f"the embedded nats-server did not start: {exc}"
        raise CommandError(msg) from None
    return server


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        msg = f"--metrics {text!r} is not HOST:PORT (like 127.0.0.1:9464; port 0: any free one)"
        raise CommandError(msg, USAGE)
    return host.strip("[]") or "0.0.0.0", int(port)


async def _telemetry(service: Service, overrides: dict[str, Any],
                     args: argparse.Namespace) -> asyncio.Server | None:
    """Add the observers the options ask for; start the health server; return it."""
    from amebus.telemetry import Observer, Observers

    observers: list[Observer] = []
    own = type(service).observer
    if own is not None:
        observers.append(own)
    server = None
    if args.metrics:
        host, port = _address(args.metrics)
        try:
            from amebus.telemetry.health import Health
            from amebus.telemetry.metrics import Metrics
        except ImportError as exc:
            msg = f"--metrics needs prometheus-client: pip install 'amebus[prometheus]' ({exc})"
            raise CommandError(msg) from None
        metrics = Metrics()
        health = Health(metrics)
        observers += [metrics, health]
        try:
            server = await health.serve_http(host, port)
        except OSError as exc:
            msg = f"--metrics {args.metrics!r}: cannot listen there: {exc}"
            raise CommandError(msg) from None
        bound = server.sockets[0].getsockname()
        say(f"metrics and health on http://{bound[0]}:{bound[1]} (/metrics, /healthz, /readyz)")
    if not args.no_discovery:
        from amebus.telemetry.discovery import Discovery

        observers.append(Discovery())
    if len(observers) > (own is not None):
        overrides["observer"] = Observers(*observers)
    return server


async def _refused(exc: BaseException, js: JetStreamContext, cls: type[Service],
                   overrides: dict[str, Any]) -> CommandError | None:
    """The CommandError for a JetStream API refusal while binding, else None."""
    from nats.js.errors import APIError

    if not isinstance(exc, APIError):
        return None
    stream = overrides.get("stream") or cls.stream
    said = f"the server refused a JetStream request: {exc.description} (err_code {exc.err_code})"
    if exc.err_code != 10065:  # 10065: subjects overlap with an existing stream
        return CommandError(said)
    subjects = list(cls.stream_subjects or ())
    owners = []
    for subject in subjects:
        with contextlib.suppress(Exception):
            owner = await asyncio.wait_for(js.find_stream_name_by_subject(subject), 2)
            owners.append(f"stream {owner!r} captures {subject!r}")
    found = f" ({'; '.join(owners)})" if owners else ""
    msg = (f"cannot create the stream {stream!r} on {subjects!r}: another "
           f"stream already captures some of these subjects{found}; serve from that stream "
           f"(set stream = its name, no stream_subjects) or choose subjects no other stream "
           f"captures")
    return CommandError(msg)


async def _serve(service: Service, nc: Client, url: str, overrides: dict[str, Any],
                 args: argparse.Namespace, console: Console | None, stopper: _Stopper) -> int:
    cls = type(service)
    js = nc.jetstream()
    ready = asyncio.Event()
    http = await _telemetry(service, overrides, args)
    task = stopper.task = asyncio.create_task(service.serve(js, ready=ready, **overrides),
                                              name="amebus-serve")
    stream = overrides.get("stream") or cls.stream or ""
    durable = durable_name(cls, overrides.get("durable"))
    every = 1.0 if console is not None else args.status_interval
    status: asyncio.Task[None] | None = None
    try:
        started = asyncio.create_task(ready.wait())
        await asyncio.wait({task, started}, return_when=asyncio.FIRST_COMPLETED)
        started.cancel()
        if ready.is_set() and every > 0:
            status = asyncio.create_task(
                _report_status(service, js, stream, durable, every, console))
        await asyncio.wait({task})
    finally:
        if status is not None:
            status.cancel()
        if console is not None:
            console.end()
        if http is not None:
            http.close()
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        if isinstance(exc, AmebusError | ConnectionError):  # ConnectionError: closed for good
            raise CommandError(str(exc)) from None
        raise jetstream_error(exc, url) or await _refused(exc, js, cls, overrides) or exc
    total = service.stats.total()
    say(f"stopped: handled {total.handled} (acked {total.acked}, naked {total.naked}, termed "
         f"{total.termed}, dead-lettered {total.dead_lettered})")
    return 0
