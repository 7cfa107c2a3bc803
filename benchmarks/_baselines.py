"""The hand-written consumer loops amebus is measured against, one coroutine per approach.

Every approach does the same work per message (`Workload.handle`): ``json.loads`` plus a cattrs
structure into `Order` (``pulled_msgspec``: msgspec straight into `Order`), dispatch by
subject to one of four async handlers, a count per route;
then it acks, except the two core rows. Each approach opens its own connection, calls
``target.ready()`` once it can receive, and returns after `Workload.done` is set and its acks
are flushed.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import cattrs
import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

__all__ = [
    "APPROACHES",
    "FETCH_BATCH",
    "MAX_ACK_PENDING",
    "NO_ACK",
    "PULL_BATCH",
    "ROUTES",
    "Order",
    "Target",
    "Unavailable",
    "Workload",
    "consumer_config",
    "decode",
    "decode_msgspec",
    "route_of",
]

ROUTES = ("created", "paid", "cancelled", "invoice")
MAX_ACK_PENDING = 10_000  # the server default (1,000) would throttle every acking approach alike
PULL_BATCH = 500  # messages asked for by one pull request of the hand-pulled loop
FETCH_BATCH = 500  # messages asked for by one `fetch()`
_PULL_EXPIRES_NS = 30 * 1_000_000_000
_PULL_HEARTBEAT_NS = 5 * 1_000_000_000
_ACK = b"+ACK"


class Unavailable(Exception):  # a signal to skip the approach, not a failure
    """The approach cannot run here (a package is missing); the worker reports it and exits."""


@attrs.frozen
class Order:
    order_id: str
    customer: str
    amount_cents: int
    currency: str
    lines: int


_converter = cattrs.Converter()


def decode(data: bytes) -> Order:
    """Decode one payload; every approach, amebus aside, calls exactly this."""
    return _converter.structure(json.loads(data), Order)


decode_msgspec: Callable[[bytes], Order] = msgspec.json.Decoder(Order).decode
"""The ``pulled_msgspec`` row's decode: msgspec straight into `Order`, the best by hand."""


def route_of(subject: str) -> str:
    """``orders.created.o1`` -> ``created``; ``orders.invoice`` -> ``invoice``."""
    return subject.split(".", 2)[1]


@attrs.frozen
class Target:
    """Where an approach consumes from, and how it says it is subscribed."""

    url: str
    stream: str
    durable: str
    ready: Callable[[], None]


def consumer_config(durable: str) -> ConsumerConfig:
    """The durable every acking approach creates: replay all, ack each message explicitly."""
    return ConsumerConfig(
        durable_name=durable,
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        max_ack_pending=MAX_ACK_PENDING,
    )


class Workload:
    """The four handlers, their counts, and the clock from the first message to the last."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.counts = dict.fromkeys(ROUTES, 0)
        self.received = 0
        self.acks = 0
        self.done = asyncio.Event()
        self._first_wall = self._last_wall = 0.0
        self._first_cpu = self._last_cpu = 0.0
        self._handlers = {
            "created": self.created,
            "paid": self.paid,
            "cancelled": self.cancelled,
            "invoice": self.invoice,
        }

    async def created(self, order: Order) -> None:
        self.counts["created"] += 1

    async def paid(self, order: Order) -> None:
        self.counts["paid"] += 1

    async def cancelled(self, order: Order) -> None:
        self.counts["cancelled"] += 1

    async def invoice(self, order: Order) -> None:
        self.counts["invoice"] += 1

    def start_clock(self) -> None:
        """Called by whoever sees the first message (`handle` and `tally` do it themselves)."""
        if not self._first_wall:
            self._first_wall = time.perf_counter()
            self._first_cpu = time.process_time()

    async def handle(self, subject: str, data: bytes,
                     decoder: Callable[[bytes], Order] = decode) -> None:
        """Decode (with `decode` unless told), dispatch by subject, count."""
        if not self.received:
            self.start_clock()
        self.received += 1
        await self._handlers[route_of(subject)](decoder(data))

    def tally(self, subject: str) -> None:
        """The `core` row's whole work: count by route, decode nothing."""
        self.count(route_of(subject))

    def count(self, route: str) -> None:
        """Count a message that amebus decoded and dispatched itself."""
        if not self.received:
            self.start_clock()
        self.received += 1
        self.counts[route] += 1

    def settled(self, *, acked: bool) -> None:
        """One message is finished; the last one stops the clock."""
        if acked:
            self.acks += 1
        if self.received >= self.expected and not self.done.is_set():
            self._last_wall = time.perf_counter()
            self._last_cpu = time.process_time()
            self.done.set()

    def report(self) -> dict[str, Any]:
        return {
            "elapsed": self._last_wall - self._first_wall,
            "cpu": self._last_cpu - self._first_cpu,
            "count": self.received,
            "routes": dict(self.counts),
            "acks": self.acks,
        }


async def _connect(url: str) -> Client:
    return await nats.connect(url, name="amebus-bench", allow_reconnect=False)


async def core(work: Workload, target: Target) -> None:
    """Core subscription, no decode, no ack: the upper bound of what nats-py delivers."""
    nc = await _connect(target.url)

    async def on_msg(msg: Msg) -> None:
        work.tally(msg.subject)
        work.settled(acked=False)

    await nc.subscribe("orders.>", cb=on_msg)
    await nc.flush()
    target.ready()
    await work.done.wait()
    await nc.close()


async def core_decode(work: Workload, target: Target) -> None:
    """Core subscription with the full decode and dispatch, no ack."""
    nc = await _connect(target.url)

    async def on_msg(msg: Msg) -> None:
        await work.handle(msg.subject, msg.data)
        work.settled(acked=False)

    await nc.subscribe("orders.>", cb=on_msg)
    await nc.flush()
    target.ready()
    await work.done.wait()
    await nc.close()


async def push(work: Workload, target: Target) -> None:
    """nats-py push subscription (flow control, heartbeats), ``await msg.ack()`` per message."""
    nc = await _connect(target.url)
    js = nc.jetstream()

    async def on_msg(msg: Msg) -> None:
        await work.handle(msg.subject, msg.data)
        await msg.ack()
        work.settled(acked=True)

    await js.subscribe(
        "orders.>",
        durable=target.durable,
        stream=target.stream,
        config=consumer_config(target.durable),
        cb=on_msg,
        manual_ack=True,
        flow_control=True,
        idle_heartbeat=5.0,
    )
    target.ready()
    await work.done.wait()
    await nc.flush()
    await nc.close()


class _Puller:
    """A pull consumer driven by hand: one inbox, one callback, requests kept topped up.

    It asks for ``batch`` messages, and whenever no more than ``refill_at`` of those are still
    owed it asks for the difference, so the server never runs dry while the handler works.
    """

    def __init__(
        self, nc: Client, work: Workload, target: Target, *, batch: int, refill_at: int,
        decoder: Callable[[bytes], Order] = decode,
    ) -> None:
        self._nc = nc
        self._decoder = decoder
        self._work = work
        self._batch = batch
        self._refill_at = refill_at
        self._next = f"$JS.API.CONSUMER.MSG.NEXT.{target.stream}.{target.durable}"
        self._inbox = nc.new_inbox()
        self._outstanding = 0  # messages asked for and not yet delivered nor expired

    async def start(self) -> None:
        await self._nc.subscribe(self._inbox, cb=self._on_msg)
        await self._refill()

    async def _refill(self) -> None:
        want = self._batch - self._outstanding
        request = {"batch": want, "expires": _PULL_EXPIRES_NS, "idle_heartbeat": _PULL_HEARTBEAT_NS}
        await self._nc.publish(self._next, json.dumps(request).encode(), reply=self._inbox)
        self._outstanding = self._batch

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and "Status" in headers:
            await self._on_status(headers)
            return
        self._outstanding -= 1
        await self._work.handle(msg.subject, msg.data, self._decoder)
        await self._nc.publish(msg.reply, _ACK)
        self._work.settled(acked=True)
        if self._outstanding <= self._refill_at and not self._work.done.is_set():
            await self._refill()

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers["Status"]
        if status == "100":  # idle heartbeat: the server is alive, nothing to do
            return
        if status in ("408", "409"):
            # A request ended (expired, or the server dropped it) and what it still owed will
            # never come. Without the header, assume every request is gone and ask afresh.
            unmet = int(headers.get("Nats-Pending-Messages", self._outstanding))
            self._outstanding = max(0, self._outstanding - unmet)
            if self._outstanding <= self._refill_at and not self._work.done.is_set():
                await self._refill()
            return
        msg = f"unexpected pull status {status!r}: {headers!r}"
        raise RuntimeError(msg)


async def pulled(work: Workload, target: Target) -> None:
    """Pull consumer pulled by hand, acked by a raw ``+ACK`` publish on the reply subject."""
    nc = await _connect(target.url)
    await nc.jetstream().add_consumer(target.stream, consumer_config(target.durable))
    await _Puller(nc, work, target, batch=PULL_BATCH, refill_at=PULL_BATCH // 2).start()
    target.ready()
    await work.done.wait()
    await nc.flush()
    await nc.close()


async def pulled_msgspec(work: Workload, target: Target) -> None:
    """`pulled`, decoding with `decode_msgspec` (msgspec straight into `Order`) instead."""
    nc = await _connect(target.url)
    await nc.jetstream().add_consumer(target.stream, consumer_config(target.durable))
    await _Puller(nc, work, target, batch=PULL_BATCH, refill_at=PULL_BATCH // 2,
                  decoder=decode_msgspec).start()
    target.ready()
    await work.done.wait()
    await nc.flush()
    await nc.close()


async def fetch(work: Workload, target: Target) -> None:
    """nats-py ``pull_subscribe`` plus a ``fetch(FETCH_BATCH)`` loop, ``await msg.ack()``."""
    nc = await _connect(target.url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(
        "orders.>",
        durable=target.durable,
        stream=target.stream,
        config=consumer_config(target.durable),
    )
    target.ready()
    while not work.done.is_set():
        try:
            msgs = await sub.fetch(FETCH_BATCH, timeout=5)
        except NatsTimeoutError:  # no messages yet: not a failure
            continue
        for msg in msgs:
            await work.handle(msg.subject, msg.data)
            await msg.ack()
            work.settled(acked=True)
    await nc.flush()
    await nc.close()


def _faststream_broker(work: Workload, target: Target, **subscriber: Any) -> Any:
    """A NatsBroker with one subscriber on ``orders.>`` and FastStream's cheapest settings.

    Logging off, no FastDepends/pydantic (``apply_types=False``), and a decoder that hands the
    handler the message itself so it runs the shared `decode`. FastStream acks after the
    handler returns (its default ``REJECT_ON_ERROR`` policy) via nats-py's ``msg.ack()``.
    """
    try:
        from faststream.nats import JStream, NatsBroker, NatsMessage
    except ImportError as error:
        msg = f"faststream[nats] is not installed ({error})"
        raise Unavailable(msg) from error

    broker = NatsBroker(target.url, logger=None, apply_types=False, graceful_timeout=5.0)

    async def itself(msg: NatsMessage) -> NatsMessage:
        return msg

    async def on_order(msg: NatsMessage) -> None:
        await work.handle(msg.raw_message.subject, msg.body)
        work.settled(acked=True)  # FastStream sends the ack right after this returns

    subscribe = broker.subscriber(
        "orders.>",
        stream=JStream(target.stream, declare=False),
        durable=target.durable,
        config=consumer_config(target.durable),
        decoder=itself,
        **subscriber,
    )
    subscribe(on_order)
    return broker


async def _run_faststream(broker: Any, work: Workload, target: Target) -> None:
    await broker.start()
    target.ready()
    await work.done.wait()
    await asyncio.sleep(0.05)  # let the last ack leave the handler wrapper
    await broker.stop()  # drains the connection, so every ack reaches the server


async def faststream(work: Workload, target: Target) -> None:
    """FastStream push subscriber (flow control and heartbeats, like `push`)."""
    broker = _faststream_broker(work, target, flow_control=True, idle_heartbeat=5.0)
    await _run_faststream(broker, work, target)


async def faststream_pull(work: Workload, target: Target) -> None:
    """FastStream pull subscriber fetching `FETCH_BATCH` at a time."""
    try:
        from faststream.nats import PullSub
    except ImportError as error:
        msg = f"faststream[nats] is not installed ({error})"
        raise Unavailable(msg) from error
    broker = _faststream_broker(work, target, pull_sub=PullSub(batch_size=FETCH_BATCH))
    await _run_faststream(broker, work, target)


async def pulled_orjson(work: Workload, target: Target) -> None:
    """`pulled`, decoding with orjson + the same cattrs converter (the loop issue 20's audit
    measured amebus against); unavailable without orjson (the ``bench`` extra)."""
    try:
        import orjson
    except ImportError as error:
        raise Unavailable(f"orjson not installed ({error})") from error

    def decode_orjson(data: bytes) -> Order:
        return _converter.structure(orjson.loads(data), Order)

    nc = await _connect(target.url)
    await nc.jetstream().add_consumer(target.stream, consumer_config(target.durable))
    await _Puller(nc, work, target, batch=PULL_BATCH, refill_at=PULL_BATCH // 2,
                  decoder=decode_orjson).start()
    target.ready()
    await work.done.wait()
    await nc.flush()


Approach = Callable[[Workload, Target], Awaitable[None]]

APPROACHES: dict[str, Approach] = {
    "core": core,
    "core_decode": core_decode,
    "push": push,
    "pulled": pulled,
    "pulled_orjson": pulled_orjson,
    "pulled_msgspec": pulled_msgspec,
    "fetch": fetch,
    "faststream": faststream,
    "faststream_pull": faststream_pull,
}
"""Every baseline by name; consume.py adds ``amebus`` from `benchmarks._amebus_bench`."""

NO_ACK = frozenset({"core", "core_decode"})
