"""What ``standby = True`` costs: one pinned instance against one plain instance consuming.

``python -m benchmarks.standby [--quick] [--messages N] [--standbys K]``

Both consume the same stored messages on their own durable with a trivial handler, in one
run, in turn: the plain durable, then the standby durable (a pinned_client consumer: every
pull carries the group and pin id, keep-alive pulls hold the pin), optionally with ``K`` idle
standbys connected beside the pinned one. The table shows msgs/s and the ratio standby /
plain; every message must be handled by one instance (verified).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import nats

import amebus
from amebus.testing import NatsServer


def _service(durable: str, seen: dict[str, set[int]], name: str, total: int,
             done: asyncio.Event, **config: Any) -> amebus.Service:
    mine = seen.setdefault(name, set())

    async def handle(data: bytes) -> None:
        mine.add(int(data))
        if sum(len(s) for s in seen.values()) >= total:
            done.set()

    cls: Any = type("Bench", (amebus.Service,), {"work": amebus.Route("work.*", handle),
                                                  "stream": "STANDBY", "durable": durable,
                                                  **config})
    return cls()  # type: ignore[no-any-return]


async def _run(url: str, durable: str, total: int, standbys: int,
               **config: Any) -> dict[str, Any]:
    seen: dict[str, set[int]] = {}
    done = asyncio.Event()
    ncs = [await nats.connect(url, ping_interval=10, max_outstanding_pings=2)
           for _ in range(1 + standbys)]
    services = [_service(durable, seen, f"i{i}", total, done, **config)
                for i in range(len(ncs))]
    start = time.perf_counter()
    tasks = [asyncio.create_task(s.serve(nc, concurrency=16)) for s, nc in zip(
        services, ncs, strict=True)]
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - start
    for task in tasks:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for nc in ncs:
        await nc.close()
    handled = set().union(*seen.values())
    active = sorted(name for name, ids in seen.items() if ids)
    return {"rate": total / elapsed, "handled": len(handled), "active": active,
            "valid": handled == set(range(total))}


async def _main(args: argparse.Namespace) -> None:
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="STANDBY", subjects=["work.*"])
        for i in range(args.messages):
            await js.publish_async(f"work.{i % 16}", str(i).encode())
        await js.publish_async_completed()
        await nc.close()
        plain = await _run(server.url, "plain", args.messages, 0)
        standby = await _run(server.url, "standby", args.messages, args.standbys,
                             standby=True, priority_timeout=5.0)
    print(f"{args.messages} stored messages, a trivial handler, concurrency 16, one run")
    print(f"{'mode':>28} {'msgs/s':>9} {'handled':>8} {'active instances':>17}")
    rows = (("plain (1 instance)", plain),
            (f"standby (1 pinned + {args.standbys} idle)", standby))
    for label, row in rows:
        print(f"{label:>28} {row['rate']:>9,.0f} {row['handled']:>8} "
              f"{len(row['active']):>17}")
    print(f"ratio standby / plain: {standby['rate'] / plain['rate']:.2f}")
    if not (plain["valid"] and standby["valid"]) or len(standby["active"]) != 1:
        msg = f"verification failed: plain {plain}, standby {standby}"
        raise SystemExit(msg)


def main(argv: list[str] | None = None) -> None:
    """Run the standby benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 messages")
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--standbys", type=int, default=2, help="idle standbys beside (2)")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages = 5_000
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
