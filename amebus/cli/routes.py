"""``amebus routes`` and ``amebus asyncapi``: what a service declares, printed without a
server."""

from __future__ import annotations

import argparse
import json
from typing import Any

from amebus.cli.load import service_class
from amebus.routing import durable_name
from amebus.service import Service

__all__ = ["asyncapi", "routes"]


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


def routes(args: argparse.Namespace) -> int:
    """``amebus routes``: the route table, as text or ``--json``."""
    cls = service_class(args.target)
    rows = _route_rows(cls)
    if args.json:
        print(json.dumps({
            "service": f"{cls.__module__}.{cls.__qualname__}",
            "stream": cls.stream,
            "durable": durable_name(cls),
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
          f"{durable_name(cls)}; routes by precedence:")
    for line in table:
        cells = (cell.ljust(width) for cell, width in zip(line, [*widths, 0], strict=True))
        print(("  " + "  ".join(cells)).rstrip())
    print(f"filter subjects: {', '.join(cls.filter_subjects) or '(none)'} "
          f"(server_filter {cls.server_filter!r})")
    return 0


# -- asyncapi -------------------------------------------------------------------------------

def asyncapi(args: argparse.Namespace) -> int:
    """``amebus asyncapi``: the AsyncAPI 3.0 document of a service."""
    from amebus.asyncapi import asyncapi_document

    cls = service_class(args.target)
    document = asyncapi_document(cls, title=args.title, version=args.api_version,
                                 server=args.server)
    print(json.dumps(document, indent=2))
    return 0
