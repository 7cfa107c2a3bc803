"""The cost of ``Route(idempotent=True)`` and ``ack_sync=True`` against a plain route.

Run ``python -m benchmarks.idempotent [--quick] [--messages N] [--rounds N]`` from the
repository root. It starts its own nats-server (127.0.0.1), fills stream ``IDEM`` with N
messages (each with a ``Nats-Msg-Id``), then per round serves it (``concurrency=16``) with a
new durable per approach, in rotating order, and times from serve() being ready to the
durable having acked all N:

- ``plain``: a route whose handler counts the message;
- ``idempotent``: the same with ``idempotent=True`` (a KV get and a put per message);
- ``ack_sync``: the same with ``ack_sync=True`` (the server confirms each ack);
- ``both``: ``idempotent=True, ack_sync=True``.

A run counts only if the handler ran exactly N times. It prints msgs/s min/median/max per
approach and each one's ratio to ``plain`` (medians).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from typing import Any

import nats
import nats.js.errors
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from amebus import Route, Service
from amebus.idempotency import DEFAULT_BUCKET
from amebus.testing import NatsServer
from benchmarks._amebus_bench import seconds_to_ack

__all__ = ["main"]

STREAM = "IDEM"
CONCURRENCY = 16  # handlers at once: the KV round trips of one overlap the others'
APPROACHES: dict[str, dict[str, bool]] = {
    "plain": {}, "idempotent": {"idempotent": True}, "ack_sync": {"ack_sync": True},
    "both": {"idempotent": True, "ack_sync": True}}


def _service(options: dict[str, bool], seen: list[int]) -> Service:
    async def handle(msg: Any) -> None:
        seen[0] += 1

    class Bench(Service):
        everything = Route("idem.>", handle, **options)

    return Bench()


async def _run(js: JetStreamContext, name: str, options: dict[str, bool], n: int,
               durable: str) -> float:
    seen = [0]
    elapsed = await seconds_to_ack(js, _service(options, seen), stream=STREAM, durable=durable,
                                   n=n, concurrency=CONCURRENCY)
    if seen[0] != n:
        msg = f"{name}: the handler ran {seen[0]} times for {n} messages"
        raise SystemExit(msg)
    return n / elapsed


async def _bench(n: int, rounds: int) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in APPROACHES}
    async with NatsServer(name="amebus-bench-idempotent") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["idem.>"]))
        for i in range(n):
            await js.publish_async(f"idem.{i % 4}", b"{}", headers={"Nats-Msg-Id": f"m{i}"})
        await js.publish_async_completed()
        names = list(APPROACHES)
        try:
            for round_ in range(rounds):
                for name in names[round_ % 4:] + names[:round_ % 4]:
                    if APPROACHES[name].get("idempotent"):  # each run: an empty bucket
                        with contextlib.suppress(nats.js.errors.NotFoundError):
                            await js.delete_key_value(DEFAULT_BUCKET)
                    rates[name].append(await _run(js, name, APPROACHES[name], n,
                                                  f"{name}_{round_}"))
        finally:
            await nc.close()
    return rates


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idempotent",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 2 rounds")
    parser.add_argument("--messages", type=int, help="messages per run (default 10,000)")
    parser.add_argument("--rounds", type=int, help="runs per approach (default 4)")
    args = parser.parse_args(argv)
    n = args.messages or (2_000 if args.quick else 10_000)
    rounds = args.rounds or (2 if args.quick else 4)
    rates = asyncio.run(_bench(n, rounds))
    plain = statistics.median(rates["plain"])
    print(f"{n} messages x {rounds} rounds, rotating order; msgs/s")
    print(f"{'approach':<12} {'min':>9} {'median':>9} {'max':>9} {'/ plain':>8}")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<12} {min(values):>9.0f} {median:>9.0f} {max(values):>9.0f} "
              f"{median / plain:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
