"""ServiceHarness: in-memory settlement must equal what the real consumer sends the server.

Each case runs twice: through the harness, and through ``serve`` on a real nats-server, where a
core subscription on ``$JS.ACK.<stream>.>`` reads the settlement bytes the client really sent.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.client import JetStreamContext

import amebus
from amebus.settlement import parse
from amebus.testing import ServiceHarness
from amebus.tracing import Decision


@attrs.frozen
class Paid(amebus.Event):
    subject_pattern = "hx.paid.*"
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return ("hx", "paid", self.order_id)


@attrs.frozen
class Cancelled(amebus.Event):
    subject = "hx.cancelled"
    order_id: str


class Shop(amebus.Service):
    backoff = (0.5, 3.0)
    max_deliver = 2
    timeout = 0.4

    @amebus.Route("hx.paid.*")
    async def paid(self, event: Paid) -> None:
        match event.order_id:
            case "nak":
                raise amebus.Nak(2.5)
            case "nak-default":
                raise amebus.Nak()
            case "term":
                raise amebus.Term("not for us")
            case "boom":
                raise RuntimeError("boom")
            case "slow":
                await asyncio.sleep(5)

    @amebus.Route("hx.>")
    async def any(self, event: Paid | Cancelled) -> None:
        pass


CASES: list[tuple[str, Callable[[], Any], bytes | None]] = [
    ("ack", lambda: Paid("ok"), None),
    ("nak with a delay", lambda: Paid("nak"), None),
    ("nak with the backoff", lambda: Paid("nak-default"), None),
    ("term with a reason", lambda: Paid("term"), None),
    ("failure with deliveries left", lambda: Paid("boom"), None),
    ("timeout", lambda: Paid("slow"), None),
    ("payload that does not decode", lambda: "hx.paid.1", b'{"order_id": 1}'),
    ("not JSON", lambda: "hx.paid.1", b"\xff{"),
    ("union without a type header", lambda: "hx.cancelled", b'{"order_id": "1"}'),
]


async def real_decision(js: JetStreamContext, nc: Client, stream: str, message: Any,
                        payload: bytes | None) -> Decision:
    seen: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ack(msg: Msg) -> None:
        if msg.data != b"+WPI":
            await seen.put(msg.data)

    sub = await nc.subscribe(f"$JS.ACK.{stream}.>", cb=on_ack)
    await nc.flush()
    ready = asyncio.Event()
    task = asyncio.create_task(Shop().serve(js, ready=ready, stream=stream, durable=stream,
                                            stream_subjects=("hx.>",)))
    try:
        await asyncio.wait_for(ready.wait(), 5)
        if isinstance(message, amebus.Event):
            await message.publish(js)
        else:
            await js.publish(message, payload or b"")
        data = await asyncio.wait_for(seen.get(), 5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await sub.unsubscribe()
        with contextlib.suppress(Exception):  # the next case creates its stream on hx.> again
            await js.delete_stream(stream)
    return parse(data)


@pytest.mark.parametrize(("case", "make", "payload"), CASES, ids=[c[0] for c in CASES])
async def test_the_harness_decides_as_the_real_consumer(
        case: str, make: Callable[[], Any], payload: bytes | None, js: JetStreamContext,
        nc: Client, unique_name: Callable[..., str]) -> None:
    stream = unique_name("HX")
    real = await real_decision(js, nc, stream, make(), payload)
    outcome = await ServiceHarness(Shop()).feed(make(), payload)
    assert outcome.decision is not None
    assert (outcome.decision.action, outcome.decision.delay) == (real.action, real.delay)
    # The reason names the stream only through the failure text, never the stream itself.
    assert outcome.decision.reason == real.reason


async def test_last_delivery_terms_and_dead_letters() -> None:
    outcome = await ServiceHarness(Shop(), dead_letter_subject="dlq.hx").feed(
        Paid("boom"), deliveries=2)
    assert outcome.decision == Decision.term("failed on attempt 2 of 2: RuntimeError: boom")
    [(subject, data, headers)] = outcome.dead_letters
    assert subject == "dlq.hx"
    assert data == b'{"order_id":"boom"}'
    assert headers["Amebus-Dead-Letter"] == "1"
    assert headers["Amebus-Original-Subject"] == "hx.paid.boom"
    assert headers["Amebus-Deliveries"] == "2"
    assert "Amebus-Event-Type" not in headers
    assert [f.stage for f in outcome.failures] == ["business"]


async def test_a_union_handler_gets_the_class_its_header_names() -> None:
    got: list[object] = []

    class Union(amebus.Service):
        @amebus.Route("hx.>")
        async def any(self, event: Paid | Cancelled) -> None:
            got.append(event)

    harness = ServiceHarness(Union())
    assert (await harness.feed(Cancelled("7"))).decision == Decision.ack()
    assert got == [Cancelled("7")]
    assert Union.routes[0].events == (Paid, Cancelled)
    assert Union.routes[0].event is None


async def test_handler_results_are_collected_not_sent() -> None:
    class Emits(amebus.Service):
        @amebus.Route("hx.paid.*")
        async def paid(self, event: Paid) -> list[Cancelled]:
            return [Cancelled(event.order_id)]

    outcome = await ServiceHarness(Emits()).feed(Paid("3"))
    assert outcome.decision == Decision.ack()
    assert outcome.published == (Cancelled("3"),)
    assert outcome.route == "paid"


async def test_configuration_overrides_apply_as_in_serve() -> None:
    class Slow(amebus.Service):
        timeout = 60.0

        @amebus.Route("hx.paid.*")
        async def paid(self, event: Paid) -> None:
            await asyncio.sleep(5)

    outcome = await ServiceHarness(Slow(), timeout=0.2, backoff=(4.0,)).feed(Paid("1"))
    assert outcome.decision == Decision.nak(4.0)
    [failure] = outcome.failures
    assert type(failure.error).__name__ == "HandlerTimeoutError"
