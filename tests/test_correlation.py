"""Correlation ids and trace context ride along a handler's result events, against a real
nats-server: two hops, with and without an id on the first message."""

from __future__ import annotations

import asyncio

import attrs
from _support import Space, serving, settled
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import Event, Route, Service
from amebus.correlation import CORRELATION_HEADER, FASTSTREAM_HEADER, correlation_id


@attrs.frozen
class Placed(Event):
    subject_pattern = "*.placed.*"
    ns: str
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "placed", self.order_id)


@attrs.frozen
class Charged(Event):
    subject_pattern = "*.charged.*"
    ns: str
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "charged", self.order_id)


@attrs.frozen
class Shipped(Event):
    subject_pattern = "*.shipped.*"
    ns: str
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "shipped", self.order_id)


def chain(space: Space, seen: dict[str, str | None], done: asyncio.Event) -> Service:
    async def charge(event: Placed, msg: Msg) -> Charged:
        seen["placed"] = correlation_id(msg)
        return Charged(event.ns, event.order_id)

    async def ship(event: Charged, msg: Msg) -> Shipped:
        seen["charged"] = correlation_id(msg)
        return Shipped(event.ns, event.order_id)

    async def shipped(event: Shipped, msg: Msg) -> None:
        seen["shipped"] = correlation_id(msg)
        seen["traceparent"] = (msg.headers or {}).get("traceparent")
        seen["faststream"] = (msg.headers or {}).get(FASTSTREAM_HEADER)
        done.set()

    class Chain(Service):
        on_placed = Route(space.subject("placed", "*"), charge)
        on_charged = Route(space.subject("charged", "*"), ship)
        on_shipped = Route(space.subject("shipped", "*"), shipped)

    return Chain()


async def test_correlation_survives_two_hops(js: JetStreamContext, space: Space) -> None:
    seen: dict[str, str | None] = {}
    done = asyncio.Event()
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    async with serving(chain(space, seen, done), js, **space.options()):
        await Placed(space.prefix, "o1").publish(js, msg_id="order-o1",
                                                 headers={"traceparent": trace})
        await asyncio.wait_for(done.wait(), 10)
        await settled(js, space)
    assert seen == {"placed": "order-o1", "charged": "order-o1", "shipped": "order-o1",
                    "traceparent": trace, "faststream": "order-o1"}


async def test_without_an_id_the_first_message_names_itself(js: JetStreamContext,
                                                           space: Space) -> None:
    seen: dict[str, str | None] = {}
    done = asyncio.Event()
    async with serving(chain(space, seen, done), js, **space.options()):
        ack = await Placed(space.prefix, "o2").publish(js)
        await asyncio.wait_for(done.wait(), 10)
        await settled(js, space)
    first = f"{space.stream}:{ack.seq}"
    assert seen["placed"] == seen["charged"] == seen["shipped"] == first
    assert seen["traceparent"] is None
    stored = await js.get_last_msg(space.stream, space.subject("shipped", "o2"))
    assert (stored.headers or {})[CORRELATION_HEADER] == first
