"""``amebus permissions module:Service``: print the least NATS permissions the service needs
(a nats-server ``authorization`` block, JSON, or ``nsc`` flags), from amebus.permissions."""

from __future__ import annotations

import argparse
from typing import Any

from amebus.cli.load import USAGE, CommandError, service_class
from amebus.errors import ConfigurationError
from amebus.provision import MODES

__all__ = ["add_parser", "run"]


def add_parser(sub: Any) -> None:
    """Add ``permissions`` to the ``amebus`` subparsers ``sub``."""
    parser = sub.add_parser(
        "permissions", help="print the least NATS permissions a service needs",
        description="Print the publish/subscribe allow lists the service needs as configured "
        "(everything else may be denied). Connect with the printed inbox prefix: amebus run "
        "does.")
    parser.add_argument("target", metavar="module.path:ServiceClass")
    parser.add_argument("--stream", help="override the class's stream")
    parser.add_argument("--durable", help="override the durable consumer name")
    parser.add_argument("--provision", choices=MODES, help="for this provision mode "
                        "(default: the class's); verify/bind need no create rights")
    parser.add_argument("--format", choices=("server", "json", "nsc"), default="server",
                        help="a nats-server authorization block (default), JSON, or nsc flags")
    parser.add_argument("--user", help="the user name in the output (default: the class name)")
    parser.add_argument("--account", default="ACCOUNT", help="the nsc account (--format nsc)")
    parser.add_argument("--publish", action="append", default=[], metavar="SUBJECT",
                        help="another subject the handlers publish to (repeatable)")
    parser.add_argument("--role", choices=("service", "operator"), default="service",
                        help="the service's own rights (default) or those of the amebus "
                        "operator commands (plan, status, pause, resume, reset, dlq)")
    parser.add_argument("--no-discovery", action="store_true",
                        help="the service runs with amebus run --no-discovery ($SRV off)")


def run(args: argparse.Namespace) -> int:
    """``amebus permissions``: print the lists; 0."""
    from amebus.permissions import permissions

    cls = service_class(args.target)
    options = {name: getattr(args, name) for name in ("stream", "durable", "provision")
               if getattr(args, name) is not None}
    try:
        found = permissions(cls, discovery=not args.no_discovery, publishes=args.publish,
                            role=args.role, **options)
    except ConfigurationError as exc:
        raise CommandError(str(exc), USAGE) from None
    if args.format == "json":
        print(found.to_json())
    elif args.format == "nsc":
        print(found.to_nsc(account=args.account, user=args.user), end="")
    else:
        print(found.to_server_config(user=args.user), end="")
    return 0
