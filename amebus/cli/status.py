"""``amebus status``: every serving instance that answers ``$SRV.STATS`` (amebus services and
other NATS micro services), one row each, from the replies gathered within ``--wait``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
from typing import TYPE_CHECKING, Any

from amebus.cli.connect import close, connect, server_url
from amebus.cli.load import USAGE, CommandError

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["gather", "status"]


async def gather(nc: Client, subject: str, wait: float) -> list[dict[str, Any]]:
    """Publish an empty request on ``subject`` and return every JSON reply within ``wait``.

    Scatter-gather has no last reply to wait for (any number of instances answer), so the
    window is a time, as for ``nats micro ls``."""
    replies: list[dict[str, Any]] = []

    async def on_reply(msg: Msg) -> None:
        with contextlib.suppress(ValueError):
            replies.append(json.loads(msg.data))

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(subject, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait)
    finally:
        await sub.unsubscribe()
    return replies


def _row(stats: dict[str, Any]) -> dict[str, Any]:
    endpoints = stats.get("endpoints") or []
    data = [e.get("data") or {} for e in endpoints]
    consumer: dict[str, Any] = next(
        (d["consumer"] for d in data if isinstance(d.get("consumer"), dict)), {})
    def total(key: str) -> int:
        return sum(int(d.get(key, 0) or 0) for d in data)
    return {
        "name": stats.get("name", ""), "id": stats.get("id", ""),
        "version": stats.get("version", ""), "started": stats.get("started", ""),
        "amebus": (stats.get("metadata") or {}).get("amebus"),
        "stream": consumer.get("stream"), "durable": consumer.get("durable"),
        "routes": len(endpoints),
        "handled": sum(int(e.get("num_requests", 0)) for e in endpoints),
        "errors": sum(int(e.get("num_errors", 0)) for e in endpoints),
        "acked": total("acked"), "naked": total("naked"), "termed": total("termed"),
        "dead_lettered": total("dead_lettered"),
        "num_pending": consumer.get("num_pending"),
        "num_ack_pending": consumer.get("num_ack_pending"),
        "pinned": consumer.get("pinned"),  # standby only: holds the pin now
        "endpoints": endpoints,
    }


async def status(args: argparse.Namespace) -> int:
    """Print the table (or ``--json``); exit 1 when nothing answered."""
    url = server_url(args)
    if url is None:
        msg = "status needs a server: pass --server URL or set NATS_URL"
        raise CommandError(msg, USAGE)
    nc = await connect(url, args, name="amebus status")
    try:
        subject = "$SRV.STATS" + (f".{args.name}" if args.name else "")
        replies = await gather(nc, subject, args.wait)
    finally:
        await close(nc)
    rows = sorted((_row(r) for r in replies), key=lambda r: (r["name"], r["started"], r["id"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if rows else 1
    if not rows:
        print(f"no service answered {subject} within {args.wait:g}s")
        return 1
    head = ("NAME", "ID", "VERSION", "STREAM/DURABLE", "ROUTES", "HANDLED", "ACKED", "NAKED",
            "TERMED", "DEAD-LETTERED", "PENDING", "ACK PENDING", "PINNED")
    table = [head]
    for r in rows:
        where = f"{r['stream']}/{r['durable']}" if r["stream"] else "-"
        lag = [("?" if v is None or v < 0 else str(v))
               for v in (r["num_pending"], r["num_ack_pending"])]
        table.append((r["name"], r["id"], r["version"], where, str(r["routes"]),
                      str(r["handled"]), str(r["acked"]), str(r["naked"]), str(r["termed"]),
                      str(r["dead_lettered"]), *lag,
                      "-" if r["pinned"] is None else "yes" if r["pinned"] else "no"))
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    for line in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip())
    print(f"{len(rows)} instance(s)")
    return 0
