"""``amebus plan module:Service``: what serving would change on the server, before it does."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from amebus.cli.load import USAGE, CommandError, service_class
from amebus.cli.ops import with_jetstream
from amebus.errors import ConfigurationError
from amebus.provision import MODES, check_options
from amebus.routing import durable_name

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.service import Service

__all__ = ["add_parser", "run", "serve_options"]


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add ``plan`` to the ``amebus`` subparsers ``sub``."""
    plan = sub.add_parser("plan", parents=[conn], help="compare a service's stream and consumer "
                          "configuration with the server's", description="Print the stream "
                          "and consumer configuration the service wants beside the server's. "
                          "Exit code 1 if serving would refuse.")
    add_target(plan)
    plan.add_argument("--provision", choices=MODES, help="plan for this provision mode "
                      "(default: the class's)")


def add_target(parser: argparse.ArgumentParser) -> None:
    """The service argument and its ``--stream`` / ``--durable`` overrides."""
    parser.add_argument("target", metavar="module.path:ServiceClass")
    parser.add_argument("--stream", help="override the class's stream")
    parser.add_argument("--durable", help="override the durable consumer name")


def serve_options(cls: type[Service], args: argparse.Namespace) -> dict[str, Any]:
    """The options serve() would bind ``cls`` with, given the command line's overrides."""
    from amebus.serving import SERVE_OPTIONS

    options = {name: getattr(cls, name) for name in SERVE_OPTIONS}
    for name in ("stream", "durable", "provision"):
        if getattr(args, name, None) is not None:
            options[name] = getattr(args, name)
    if not options["stream"]:
        msg = f"{cls.__name__} has no stream; set it on the class or pass --stream"
        raise CommandError(msg, USAGE)
    options["durable"] = durable_name(cls, options["durable"])
    try:
        check_options(cls.__name__, options)
    except ConfigurationError as exc:
        raise CommandError(str(exc), USAGE) from None
    return options


async def run(args: argparse.Namespace) -> int:
    """``amebus plan``: print the plan; exit code 1 if serving would refuse."""
    from amebus.plan import plan_service

    cls = service_class(args.target)
    options = serve_options(cls, args)

    async def show(js: JetStreamContext) -> int:
        plan = await plan_service(js, cls, options)
        print(plan.render())
        return 0 if plan.outcome()[0] else 1

    return await with_jetstream(args, "amebus plan", show)
