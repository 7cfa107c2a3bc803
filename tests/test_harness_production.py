"""ServiceHarness settles as the served consumer does, checked side by side on a real server:
an unrouted subject (acked as skipped by an unfiltered consumer) and a union handler, which
tells its events apart by the ``Amebus-Event-Type`` header."""

from __future__ import annotations

import json
from typing import Any

import attrs
import nats
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import EVENT_TYPE_HEADER, Decision, Event, Route, Service
from amebus.testing import NatsServer, ServiceHarness


async def _handle(payload: bytes) -> None: ...


def routed_only_a(space: Space) -> Service:
    cls: Any = type("OnlyA", (Service,), {"a": Route(space.subject("a"), _handle)})
    return cls()  # type: ignore[no-any-return]


async def test_unrouted_subject_is_acked_as_skipped_by_both(
        nc: Client, js: JetStreamContext, space: Space) -> None:
    service = routed_only_a(space)
    terminated: list[bytes] = []

    async def on_terminated(msg: Msg) -> None:
        terminated.append(msg.data)

    sub = await nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{space.stream}.{space.durable}",
        cb=on_terminated)
    async with serving(service, js, **space.options()):
        ack = await js.publish(space.subject("b"), b"for another service")
        await settled(js, space, ack.seq)
    await sub.unsubscribe()
    assert service.stats.skipped == 1 and terminated == []  # acked, not termed

    outcome = await ServiceHarness(routed_only_a(space)).feed(space.subject("b"), b"x")
    assert (outcome.decision, outcome.route, outcome.skipped) == (Decision.ack(), None, True)
    assert outcome.dead_letters == () and outcome.failures == ()


async def test_a_filtering_consumer_terms_what_it_cannot_route(space: Space) -> None:
    harness = ServiceHarness(routed_only_a(space), server_filter="routes",
                             dead_letter_subject="dead.x")
    outcome = await harness.feed(space.subject("b"), b"x")
    assert outcome.decision is not None and outcome.decision.action == "term"
    assert not outcome.skipped and len(outcome.dead_letters) == 1
    work_queue = await ServiceHarness(routed_only_a(space), work_queue=True).feed(
        space.subject("b"), b"x")
    assert work_queue.decision is not None and work_queue.decision.action == "term"


@attrs.frozen
class Shipped(Event):
    subject = "union.shipped"
    order_id: str


@attrs.frozen
class Returned(Event):
    subject = "union.returned"
    order_id: str


class Parcels(Service):
    stream = "UNION"
    stream_subjects = ("union.>",)

    @Route("union.*")
    async def parcel(self, event: Shipped | Returned) -> None:
        self.seen.append(type(event).__name__)

    def __init__(self) -> None:
        self.seen: list[str] = []


async def test_a_union_handler_needs_the_event_type_header(
        amebus_nats_server_fresh: NatsServer) -> None:
    body = json.dumps({"order_id": "1"}).encode()
    nc = await nats.connect(amebus_nats_server_fresh.url)
    js = nc.jetstream()
    served, reasons = Parcels(), []

    async def on_terminated(msg: Msg) -> None:
        reasons.append(json.loads(msg.data)["reason"])

    await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.UNION.Parcels",
                       cb=on_terminated)
    async with serving(served, js, ack_wait=2.0):
        await Returned("1").publish(js)                                  # sets the header
        await js.publish("union.returned", body)                         # no header
        await js.publish("union.returned", body, headers={EVENT_TYPE_HEADER: "nope"})
        await eventually(lambda: served.seen == ["Returned"] and len(reasons) == 2, 10,
                         "one handled, two termed")

    harness = ServiceHarness(Parcels())
    with_header = await harness.feed(Returned("1"))
    without = await harness.feed("union.returned", body)
    wrong = await harness.feed("union.returned", body, headers={EVENT_TYPE_HEADER: "nope"})
    assert with_header.decision == Decision.ack()
    assert [without.decision, wrong.decision] == [Decision.term(r) for r in reasons]
    assert f"has {EVENT_TYPE_HEADER} None" in reasons[0]
    await nc.close()
