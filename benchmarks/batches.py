"""Batch routes against the same handler run per message, in one run.

Run ``python -m benchmarks.batches [--quick] [--messages N] [--rounds N]`` from the repository
root. It starts its own nats-server (127.0.0.1), fills stream ``BATCHES`` with N small events,
then per round serves it with a new durable per approach, in rotating order, and times from
serve() being ready to the durable having acked all N:

- ``per-message``: ``Route(Item, handler)``, ``concurrency=16``; the handler gets one event;
- ``batch``: ``Route(Item, batch=Batch(size=100, wait=0.05))``; the handler gets a list.

Each approach runs two workloads: ``count`` (the handler only records the ids: the framework's
own cost per message) and ``write`` (each call also awaits one 2 ms round trip, a stand-in for
a database insert that takes one row or a hundred alike). A run counts only if every id was
handled exactly once. It prints msgs/s min/median/max and the ratio batch / per-message
(medians) per workload.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
from collections.abc import Callable
from typing import Any

import attrs
import nats
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

import amebus
from amebus import Batch, Route, Service
from amebus.testing import NatsServer
from benchmarks._amebus_bench import seconds_to_ack

__all__ = ["main"]

STREAM = "BATCHES"
CONCURRENCY = 16  # per-message handlers at once, so their round trips overlap
SIZE = 100
WORKLOADS = {"count": 0.0, "write": 0.002}  # seconds one handler call awaits
APPROACHES = ("per-message", "batch")


@attrs.frozen
class Item(amebus.Event):
    subject = "batches.item"
    item_id: int


def _service(approach: str, pause: float, seen: list[int]) -> Service:
    if approach == "batch":
        async def many(items: list[Item]) -> None:
            seen.extend(item.item_id for item in items)
            if pause:
                await asyncio.sleep(pause)

        class Batched(Service):
            items = Route(Item, many, batch=Batch(size=SIZE, wait=0.05))

        return Batched()

    async def one(item: Item) -> None:
        seen.append(item.item_id)
        if pause:
            await asyncio.sleep(pause)

    class PerMessage(Service):
        items = Route(Item, one)

    return PerMessage()


async def _run(js: JetStreamContext, make: Callable[[list[int]], Service], n: int,
               durable: str, name: str) -> float:
    seen: list[int] = []
    elapsed = await seconds_to_ack(js, make(seen), stream=STREAM, durable=durable, n=n,
                                   concurrency=CONCURRENCY)
    if sorted(seen) != list(range(n)):
        msg = f"{name}: handled {len(seen)} ids ({len(set(seen))} distinct) for {n} messages"
        raise SystemExit(msg)
    return n / elapsed


async def _bench(n: int, rounds: int) -> dict[str, dict[str, list[float]]]:
    rates: dict[str, dict[str, list[float]]] = {w: {a: [] for a in APPROACHES}
                                                for w in WORKLOADS}
    async with NatsServer(name="amebus-bench-batches") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["batches.>"]))
        for i in range(n):
            out = Item(item_id=i).encode()
            await js.publish_async(out.subject, out.payload, headers=out.headers)
        await js.publish_async_completed()
        try:
            for round_ in range(rounds):
                for workload, pause in WORKLOADS.items():
                    order = APPROACHES[round_ % 2:] + APPROACHES[:round_ % 2]
                    for approach in order:
                        name = f"{workload}/{approach}"

                        def make(seen: list[int], a: str = approach,
                                 p: float = pause) -> Service:
                            return _service(a, p, seen)

                        durable = f"{workload}_{approach.replace('-', '_')}_{round_}"
                        rates[workload][approach].append(
                            await _run(js, make, n, durable, name))
        finally:
            await nc.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.batches", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 2 rounds")
    parser.add_argument("--messages", type=int, help="messages per run (default 10,000)")
    parser.add_argument("--rounds", type=int, help="runs per approach (default 3)")
    args = parser.parse_args(argv)
    n = args.messages or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 3)
    rates: dict[str, Any] = asyncio.run(_bench(n, rounds))
    print(f"{n} messages x {rounds} rounds, rotating order; batch size {SIZE}, per-message "
          f"concurrency {CONCURRENCY}; msgs/s")
    print(f"{'workload':<9} {'approach':<12} {'min':>9} {'median':>9} {'max':>9}")
    for workload, by_approach in rates.items():
        for approach, values in by_approach.items():
            print(f"{workload:<9} {approach:<12} {min(values):>9.0f} "
                  f"{statistics.median(values):>9.0f} {max(values):>9.0f}")
    for workload, by_approach in rates.items():
        ratio = (statistics.median(by_approach["batch"])
                 / statistics.median(by_approach["per-message"]))
        print(f"ratio batch / per-message ({workload}): {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
