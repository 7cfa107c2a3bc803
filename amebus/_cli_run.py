"""``amebus run``: serve a service until SIGINT/SIGTERM, with a status line (in place on a
terminal, a log line otherwise) and an embedded nats-server when no server is given.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from amebus._cli_connect import close, connect, jetstream_error, server_url
from amebus._cli_load import USAGE, CommandError, load_service, say
from amebus.errors import AmebusError
from amebus.service import Service

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from amebus.testing.server import NatsServer

__all__ = ["Console", "run"]

log = logging.getLogger("amebus.cli")


class Console(logging.StreamHandler[TextIO]):
    """A log handler that keeps an in-place status line (on a terminal) below the log."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.status = ""

    def emit(self, record: logging.LogRecord) -> None:
        if self.status:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if self.status:
            self.stream.write(self.status)
            self.flush()

    def show(self, line: str) -> None:
        self.status = line
        self.stream.write("\r\x1b[K" + line)
        self.flush()

    def end(self) -> None:
        if self.status:
            self.stream.write("\n")
            self.flush()
            self.status = ""


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


class _Stopper:
    """SIGINT/SIGTERM: the first cancels serving (graceful), the second exits at once."""

    def __init__(self, console: Console | None, shutdown_timeout: float) -> None:
        self.console = console
        self.shutdown_timeout = shutdown_timeout
        self.server: NatsServer | None = None
        self.task: asyncio.Task[None] | None = None
        self.signum = 0
        self._loop = asyncio.get_running_loop()

    def __enter__(self) -> _Stopper:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._loop.add_signal_handler(signum, self._on_signal, signum)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.console is not None:
            self.console.end()
        if self.signum:  # the second signal: unsettled messages come back after ack_wait
            say(f"{name} again: stopping at once; messages not settled are redelivered "
                 f"after ack_wait")
            if self.server is not None:
                self.server.stop_sync(1.0)
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        say(f"{name}: stopping; running handlers get up to {self.shutdown_timeout:g}s (send "
             f"it again to stop at once)")
        if self.task is not None:
            self.task.cancel()


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
    for name in ("concurrency", "stream", "durable"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    url = server_url(args)
    if url is not None and args.store is not None:
        msg = "--store is for the embedded server; it has no effect with --server or NATS_URL"
        raise CommandError(msg, USAGE)
    server: NatsServer | None = None
    if url is None:
        server = stopper.server = await _embedded_server(args.store)
        url = server.url
        say(f"no --server or NATS_URL: started an embedded nats-server at {url}, store "
             f"{server.store_dir}")
    try:
        nc = await connect(url, args, name=f"amebus {cls.__name__}")
        try:
            if stopper.signum:  # stopped while starting
                return 0
            return await _serve(service, nc, url, overrides, args, console, stopper)
        finally:
            await close(nc)
    finally:
        if server is not None:
            await server.stop()


async def _embedded_server(store: str | None) -> NatsServer:
    from amebus.testing.server import NatsServer

    try:
        server = NatsServer(store_dir=store, name="amebus-embedded")
        await server.start()
    except FileNotFoundError as exc:
        msg = f"no --server or NATS_URL, and no nats-server to embed: {exc}"
        raise CommandError(msg, USAGE) from None
    except (RuntimeError, TimeoutError) as exc:
        msg = f"the embedded nats-server did not start: {exc}"
        raise CommandError(msg) from None
    return server


async def _serve(service: Service, nc: Client, url: str, overrides: dict[str, Any],
                 args: argparse.Namespace, console: Console | None, stopper: _Stopper) -> int:
    cls = type(service)
    js = nc.jetstream()
    ready = asyncio.Event()
    task = stopper.task = asyncio.create_task(service.serve(js, ready=ready, **overrides),
                                              name="amebus-serve")
    stream = overrides.get("stream") or cls.stream or ""
    durable = overrides.get("durable") or cls.durable or cls.__name__
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
    exc = None if task.cancelled() else task.exception()
    if exc is not None:
        if isinstance(exc, AmebusError | ConnectionError):  # ConnectionError: closed for good
            raise CommandError(str(exc)) from None
        raise jetstream_error(exc, url) or exc
    total = service.stats.total()
    say(f"stopped: handled {total.handled} (acked {total.acked}, naked {total.naked}, termed "
         f"{total.termed}, dead-lettered {total.dead_lettered})")
    return 0
