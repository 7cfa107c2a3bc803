"""Order per key: K keys with ``concurrency=K`` against K-way concurrency without keys.

``python -m benchmarks.ordering [--quick] [--wait-ms 2] [--levels 4,16,64] [--rounds 2]``

Each handler awaits ``asyncio.sleep(wait)`` (an I/O-bound handler). Per level K, the same
messages (spread round-robin over K keys, ``work.<key>.<n>``) are consumed by a service with
``key=1`` and by one without a key, both with ``concurrency=K``, interleaved over rounds on
one server, a fresh durable each. The table shows the median msgs/s of each and their
ratio; the keyed runs are checked: per key, the handling follows the stream order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import time
from typing import Any

import nats
from nats.aio.msg import Msg

import amebus
from amebus.testing import NatsServer


def _service(wait: float, total: int, done: asyncio.Event, seen: list[tuple[str, int]],
             key: int | None) -> amebus.Service:
    async def handle(msg: Msg) -> None:
        await asyncio.sleep(wait)
        _, group, n = msg.subject.split(".")
        seen.append((group, int(n)))
        if len(seen) == total:
            done.set()

    routes: dict[str, Any] = {"stream": "ORDERING", "work": amebus.Route("work.*.*", handle)}
    service: amebus.Service = type("Ordering", (amebus.Service,), {**routes, "key": key})()
    return service


async def _run(js: Any, level: int, wait: float, total: int, key: int | None,
               durable: str) -> tuple[float, bool]:
    done = asyncio.Event()
    seen: list[tuple[str, int]] = []
    service = _service(wait, total, done, seen, key)
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve(js, ready=ready, durable=durable,
                                             concurrency=level))
    await asyncio.wait_for(ready.wait(), timeout=30)
    start = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=total * wait + 60)
    elapsed = time.perf_counter() - start
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    in_order = all(
        [n for g, n in seen if g == group] == sorted(n for g, n in seen if g == group)
        for group in {g for g, _ in seen})
    await js.delete_consumer("ORDERING", durable)
    return total / elapsed, in_order and len(seen) == total


async def _main(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    wait = args.wait_ms / 1000
    async with NatsServer() as server:
        nc = await nats.connect(server.url, ping_interval=10, max_outstanding_pings=2)
        js = nc.jetstream()
        print(f"handlers wait {args.wait_ms:g} ms; {args.rounds} rounds, interleaved; "
              f"about {args.seconds:g} s of ideal work per run")
        print(f"{'K':>4} {'messages':>8} {'keyed msgs/s':>13} {'unkeyed msgs/s':>15} "
              f"{'ideal':>7} {'keyed / unkeyed':>16} {'keyed in order':>15}")
        broken = []
        for level in levels:
            total = max(100, int(level / wait * args.seconds))
            with contextlib.suppress(Exception):
                await js.delete_stream("ORDERING")
            await js.add_stream(name="ORDERING", subjects=["work.>"])
            for n in range(total):  # work.<key>.<n>: round-robin over the K keys
                await js.publish_async(f"work.g{n % level}.{n}", b"{}")
            await js.publish_async_completed()
            rates: dict[str, list[float]] = {"keyed": [], "unkeyed": []}
            ordered = True
            for round_ in range(args.rounds):
                for kind in ("keyed", "unkeyed") if round_ % 2 == 0 else ("unkeyed", "keyed"):
                    rate, ok = await _run(js, level, wait, total, 1 if kind == "keyed" else None,
                                          f"{kind}-{level}-{round_}")
                    rates[kind].append(rate)
                    ordered = ordered and (ok or kind == "unkeyed")
            keyed, unkeyed = (statistics.median(rates[k]) for k in ("keyed", "unkeyed"))
            print(f"{level:>4} {total:>8} {keyed:>13,.0f} {unkeyed:>15,.0f} "
                  f"{level / wait:>7,.0f} {keyed / unkeyed:>15.2f}x {ordered!s:>15}")
            if not ordered:
                broken.append(level)
        await js.delete_stream("ORDERING")
        await nc.close()
    if broken:
        raise SystemExit(f"keyed runs lost a message or broke the order at K = {broken}")


def main(argv: list[str] | None = None) -> None:
    """Run the ordering benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="levels 4,16, 0.3 s, 1 round")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="handler wait (2 ms)")
    parser.add_argument("--levels", default="4,16,64")
    parser.add_argument("--seconds", type=float, default=1.0, help="ideal seconds per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds, args.rounds = "4,16", 0.3, 1
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
