"""Publish throughput of ``amebus.publish.publish_many`` against raw ``js.publish_async``.

Run ``python -m benchmarks.publish [--quick] [--events N] [--rounds N]`` from the repository
root. It starts its own nats-server (127.0.0.1, JetStream, memory stream ``BENCH`` on
``bench.>`` so the client side dominates), then per round publishes N events both ways, in
alternating order, purging the stream in between:

- ``publish_many``: the events themselves (subjects computed, payloads encoded, headers set);
- ``publish_async``: the same subjects, payloads and headers, prepared before the clock starts,
  through nats-py's ``js.publish_async`` and one ``gather`` of its futures;
- ``atomic``: ``publish_many(..., atomic=True)`` in batches of 1,000 (the server's limit), one
  batch after the other.

Every run must return N acks with strictly increasing sequences, or the benchmark exits 1.
It prints msgs/s min/median/max per approach, the ratios of the medians, and the encode
(plain, and checked as strictly as decoding, as publishing does) and decode cost of one event
in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import statistics
import sys
import time
import timeit
from collections.abc import Awaitable, Callable

import attrs
import nats
from nats.js import JetStreamContext
from nats.js.api import PubAck, StorageType, StreamConfig

from amebus.atomic import MAX_ATOMIC
from amebus.codec import default_codec
from amebus.events import EVENT_TYPE_HEADER, Event, subject_of
from amebus.publish import publish_many
from amebus.testing import NatsServer

__all__ = ["BenchOrder", "main"]

STREAM = "BENCH"


@attrs.frozen
class BenchOrder(Event):
    """A ~120-byte order event on ``bench.<route>.<order_id>``."""

    subject_pattern = "bench.*.*"
    event_type = "bench.order.v1"

    order_id: str
    route: str
    customer: str
    amount_cents: int
    currency: str
    lines: int
    gift: bool

    def subject(self) -> tuple[str, ...]:
        return ("bench", self.route, self.order_id)


def _events(n: int) -> list[BenchOrder]:
    routes = ("created", "paid", "shipped")
    return [BenchOrder(order_id=f"o{i:07d}", route=routes[i % 3],
                       customer=f"customer-{i % 997:04d}", amount_cents=1999 + i % 500,
                       currency="EUR", lines=1 + i % 5, gift=i % 7 == 0) for i in range(n)]


async def _raw(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]]
               ) -> list[PubAck]:
    futures = [await js.publish_async(subject, payload, headers=headers)
               for subject, payload, headers in items]
    return list(await asyncio.gather(*futures))


def _check(name: str, acks: list[PubAck], n: int) -> None:
    seqs = [ack.seq for ack in acks]
    if len(acks) != n or any(b <= a for a, b in itertools.pairwise(seqs)):
        msg = f"{name}: expected {n} acks with increasing sequences, got {len(acks)}"
        raise SystemExit(msg)


async def _timed(run: Callable[[], Awaitable[list[PubAck]]], name: str, n: int) -> float:
    start = time.perf_counter()
    acks = await run()
    elapsed = time.perf_counter() - start
    _check(name, acks, n)
    return n / elapsed


async def _bench(n: int, rounds: int) -> dict[str, list[float]]:
    events = _events(n)
    items = [(subject_of(e), default_codec.encode(e), {EVENT_TYPE_HEADER: e.event_type})
             for e in events]
    rates: dict[str, list[float]] = {"publish_many": [], "publish_async": [], "atomic": []}

    async def atomic() -> list[PubAck]:
        acks: list[PubAck] = []
        for start in range(0, n, MAX_ATOMIC):
            acks += await publish_many(js, events[start:start + MAX_ATOMIC], atomic=True)
        return acks

    runs: dict[str, Callable[[], Awaitable[list[PubAck]]]] = {
        "publish_many": lambda: publish_many(js, events),
        "publish_async": lambda: _raw(js, items),
        "atomic": atomic,
    }
    async with NatsServer(name="amebus-bench-publish") as server:
        nc = await nats.connect(server.url, allow_reconnect=False)
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=["bench.>"],
                                         storage=StorageType.MEMORY, allow_atomic=True))
        try:
            names = list(runs)
            await _timed(runs[names[0]], "warm-up", n)  # first inbox, hook and hot paths
            await _timed(runs[names[1]], "warm-up", n)
            await _timed(runs[names[2]], "warm-up", n)
            for round_ in range(rounds):
                order = names[round_ % 3:] + names[:round_ % 3]
                for name in order:
                    await js.purge_stream(STREAM)
                    rates[name].append(await _timed(runs[name], name, n))
        finally:
            await nc.close()
    return rates


def _codec_costs() -> tuple[float, float, float, int]:
    event = _events(1)[0]
    data = default_codec.encode(event)
    decode = default_codec.decoder(BenchOrder)
    number = 20_000
    encode_s = min(timeit.repeat(lambda: default_codec.encode(event), number=number, repeat=5))
    checked_s = min(timeit.repeat(lambda: default_codec.encode(event, check=True),
                                  number=number, repeat=5))
    decode_s = min(timeit.repeat(lambda: decode(data), number=number, repeat=5))
    return (encode_s / number * 1e6, checked_s / number * 1e6, decode_s / number * 1e6,
            len(data))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.publish", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 events, 3 rounds")
    parser.add_argument("--events", type=int, help="events per run (default 20,000)")
    parser.add_argument("--rounds", type=int, help="runs per approach (default 7)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    n = args.events or (2_000 if args.quick else 20_000)
    rounds = args.rounds or (3 if args.quick else 7)
    rates = asyncio.run(_bench(n, rounds))
    print(f"{n} events x {rounds} rounds, interleaved; msgs/s")
    print(f"{'approach':<14} {'min':>9} {'median':>9} {'max':>9}")
    for name, values in rates.items():
        print(f"{name:<14} {min(values):>9.0f} {statistics.median(values):>9.0f} "
              f"{max(values):>9.0f}")
    ratio = statistics.median(rates["publish_many"]) / statistics.median(rates["publish_async"])
    print(f"ratio publish_many / publish_async (medians): {ratio:.2f}")
    ratio = statistics.median(rates["atomic"]) / statistics.median(rates["publish_many"])
    print(f"ratio atomic / publish_many (medians): {ratio:.2f}")
    encode_us, checked_us, decode_us, size = _codec_costs()
    print(f"codec, one {size}-byte event: encode {encode_us:.2f} us, checked encode (as "
          f"publishing does) {checked_us:.2f} us, decode {decode_us:.2f} us")
    return 0


if __name__ == "__main__":
    sys.exit(main())
