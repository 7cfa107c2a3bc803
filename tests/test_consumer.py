"""The settlement table, row by row, against a real nats-server.

Each class quotes the row it checks. Outcomes are read from the server (consumer state, the
redelivery count handlers see, term advisories, what landed in the stream), never from mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, RawStreamMsg

import amebus
from amebus import (
    Decision,
    DecodeError,
    Failure,
    HandlerTimeoutError,
    JetStreamConsumer,
    Nak,
    NoRouteError,
    PublishError,
    Route,
    Service,
    Settings,
    Term,
)

TERMINATED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"
MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"


# -- events ---------------------------------------------------------------------------------


@attrs.frozen
class Paid(amebus.Event):
    subject_pattern = "*.paid.*"
    ns: str
    order_id: str
    amount: float

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "paid", self.order_id)


@attrs.frozen
class Shipped(amebus.Event):
    subject_pattern = "*.shipped.*"
    ns: str
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "shipped", self.order_id)


# -- helpers --------------------------------------------------------------------------------


@attrs.define
class Call:
    """One delivery as the handler saw it."""

    subject: str
    seq: int
    delivered: int
    at: float
    data: bytes


Behaviour = Callable[[Msg, Call], Any]


class Probe:
    """Records every delivery, then runs the test's behaviour (which may raise or return)."""

    def __init__(self, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour
        self.calls: list[Call] = []
        self.cancelled: list[Call] = []

    async def __call__(self, msg: Msg) -> Any:
        meta = msg.metadata
        call = Call(subject=msg.subject, seq=meta.sequence.stream,
                    delivered=meta.num_delivered, at=time.monotonic(), data=msg.data)
        self.calls.append(call)
        if self.behaviour is None:
            return None
        try:
            result = self.behaviour(msg, call)
            if inspect.isawaitable(result):
                result = await result
        except asyncio.CancelledError:
            self.cancelled.append(call)
            raise
        return result

    def deliveries(self, seq: int) -> list[Call]:
        return [c for c in self.calls if c.seq == seq]

    def gaps(self, seq: int) -> list[float]:
        times = [c.at for c in self.deliveries(seq)]
        return [round(b - a, 3) for a, b in itertools.pairwise(times)]


def probe_service(pattern: str, probe: Probe, *, timeout: float | None = None) -> Service:
    """A fresh service instance with one route on ``pattern`` calling ``probe``."""

    async def handle(msg: Msg) -> Any:
        return await probe(msg)

    class ProbeService(Service):
        everything = Route(pattern, handle, timeout=timeout)

    return ProbeService()


class RecordingTracer:
    """An ErrorTracer that keeps every Failure and optionally decides instead of amebus."""

    def __init__(self, decide: Callable[[Failure], Decision | None] | None = None) -> None:
        self.failures: list[Failure] = []
        self.decide = decide

    def trace(self, failure: Failure) -> Decision | None:
        self.failures.append(failure)
        return self.decide(failure) if self.decide is not None else None


async def stored(js: JetStreamContext, stream: str, prefix: str) -> list[RawStreamMsg]:
    """Every message of ``stream`` whose subject starts with ``prefix``."""
    last = (await js.stream_info(stream)).state.last_seq
    messages = []
    for seq in range(1, last + 1):
        msg = await js.get_msg(stream, seq)
        if msg.subject is not None and msg.subject.startswith(prefix):
            messages.append(msg)
    return messages


@pytest.fixture
async def terminated(nc: Client, space: Space) -> AsyncIterator[list[dict[str, Any]]]:
    """The server's MSG_TERMINATED advisories for this space's consumer, as they arrive."""
    seen: list[dict[str, Any]] = []

    async def on(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await nc.subscribe(f"{TERMINATED}.{space.stream}.{space.durable}", cb=on)
    await nc.flush()
    yield seen
    await sub.unsubscribe()


def raising(error: BaseException, *, until: int | None = None) -> Behaviour:
    """Raise ``error`` on every delivery (or on deliveries before ``until``)."""

    def behave(msg: Msg, call: Call) -> None:
        if until is None or call.delivered < until:
            raise error

    return behave


# -- the table ------------------------------------------------------------------------------


class TestReturnAcks:
    """| handler returns | ack |"""

    async def test_each_message_acked_once(self, js: JetStreamContext, space: Space) -> None:
        probe = Probe()
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(ack_wait=1.0)):
            for i in range(3):
                await js.publish(space.subject("in", str(i)), b"x")
            info = await settled(js, space, 3)
        assert info.num_redelivered == 0
        assert info.delivered.stream_seq == 3
        assert info.delivered.consumer_seq == 3  # each delivered exactly once
        assert [c.delivered for c in probe.calls] == [1, 1, 1]
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked, stats.termed) == (3, 3, 0, 0)

    async def test_plain_processor_acked(self, nc: Client, js: JetStreamContext,
                                         space: Space) -> None:
        """JetStreamConsumer over any object with ``async def process(msg)``."""
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        await js.publish(space.subject("in"), b"x")
        psub = await js.pull_subscribe(space.subject(">"), durable=space.durable,
                                       stream=space.stream)
        seen: list[bytes] = []

        class Plain:
            async def process(self, msg: Msg, /) -> None:
                seen.append(msg.data)

        consumer = JetStreamConsumer(Plain(), nc, settings=Settings(ack_wait=2.0))
        [msg] = await psub.fetch(1, timeout=2)
        assert await consumer.handle(msg) == Decision.ack()
        await settled(js, space, 1)
        assert seen == [b"x"]
        assert consumer.handlers["Plain"].stats.acked == 1


class TestReturnEvents:
    """| handler returns an Event or a list of them | publish them (awaiting the stream's ack),
    then ack; a publish failure is a post-process error, settled as "any other exception" |"""

    @pytest.mark.parametrize("as_list", [False, True], ids=["one", "list"])
    async def test_events_published_then_acked(self, js: JetStreamContext, space: Space,
                                               as_list: bool) -> None:
        def ship(msg: Msg, call: Call) -> Shipped | list[Shipped]:
            order = msg.subject.rsplit(".", 1)[-1]
            if as_list:
                return [Shipped(space.prefix, f"{order}a"), Shipped(space.prefix, f"{order}b")]
            return Shipped(space.prefix, order)

        probe = Probe(ship)
        service = probe_service(space.subject("in", "*"), probe)
        async with serving(service, js, **space.options()):
            first = await js.publish(space.subject("in", "o1"), b"x")
            await settled(js, space, first.seq)  # the outputs of o1 go before o2 in the stream
            last = await js.publish(space.subject("in", "o2"), b"x")
            count = 4 if as_list else 2
            await settled(js, space, last.seq)
            shipped = await stored(js, space.stream, space.subject("shipped"))
        assert len(shipped) == count
        expected = ({"o1a", "o1b", "o2a", "o2b"} if as_list else {"o1", "o2"})
        assert {m.subject.rsplit(".", 1)[-1] for m in shipped if m.subject} == expected
        for m in shipped:
            assert m.headers is not None
            assert m.headers[amebus.EVENT_TYPE_HEADER] == Shipped.event_type
            assert json.loads(m.data or b"")["ns"] == space.prefix
        assert [c.delivered for c in probe.calls] == [1, 1]

    async def test_publish_failure_is_retried_with_backoff(self, js: JetStreamContext,
                                                           space: Space,
                                                           unique_name: Callable[..., str]
                                                           ) -> None:
        nowhere = unique_name("nostream").lower()  # no stream captures nowhere.shipped.*

        def ship_once(msg: Msg, call: Call) -> Shipped | None:
            return Shipped(nowhere, "o1") if call.delivered == 1 else None

        probe = Probe(ship_once)
        tracer = RecordingTracer()
        service = probe_service(space.subject("in"), probe)
        async with serving(service, js, **space.options(backoff=(0.3,), error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1)
        assert [c.delivered for c in probe.calls] == [1, 2]
        [gap] = probe.gaps(1)
        assert 0.25 <= gap < 1.0, gap  # the backoff, not ack_wait (2 s)
        [failure] = tracer.failures
        assert failure.stage == "post-process"
        assert isinstance(failure.error, PublishError)
        assert failure.decision == Decision.nak(0.3)
        assert failure.retryable
        assert info.num_ack_pending == 0
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked) == (2, 1, 1)


    async def test_mixed_result_is_a_post_process_error(self, js: JetStreamContext,
                                                        space: Space) -> None:
        """A list mixing events and other values publishes nothing and is retried."""

        def mixed_once(msg: Msg, call: Call) -> list[Any] | None:
            return [Shipped(space.prefix, "o1"), 42] if call.delivered == 1 else None

        tracer = RecordingTracer()
        probe = Probe(mixed_once)
        service = probe_service(space.subject("in"), probe)
        async with serving(service, js, **space.options(error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
        [failure] = tracer.failures
        assert (failure.stage, type(failure.error)) == ("post-process", TypeError)
        assert await stored(js, space.stream, space.subject("shipped")) == []
        assert [c.delivered for c in probe.calls] == [1, 2]

    async def test_other_values_are_just_acked(self, js: JetStreamContext,
                                               space: Space) -> None:
        probe = Probe(lambda msg, call: {"not": "an event"})
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options()):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1)
        assert info.delivered.consumer_seq == 1
        assert service.stats.total().acked == 1


class TestNak:
    """| handler raises amebus.Nak(delay=...) | nak with that delay |"""

    async def test_redelivered_after_the_delay(self, js: JetStreamContext,
                                               space: Space) -> None:
        probe = Probe(raising(Nak(delay=0.5), until=2))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(backoff=(5.0,))):
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: len(probe.calls) == 1, what="first delivery")
            await eventually(lambda: service.stats.total().naked == 1, what="the nak sent")
            info = await js.consumer_info(space.stream, space.durable)
            assert info.num_ack_pending == 1  # nak'ed, waiting out its delay
            info = await settled(js, space, 1)
        assert [c.delivered for c in probe.calls] == [1, 2]
        [gap] = probe.gaps(1)
        assert 0.45 <= gap < 1.0, gap
        assert info.delivered.consumer_seq == 2
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked, stats.termed) == (2, 1, 1, 0)

    async def test_no_delay_uses_the_backoff(self, js: JetStreamContext, space: Space) -> None:
        probe = Probe(raising(Nak(), until=2))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(backoff=(0.4,))):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
        [gap] = probe.gaps(1)
        assert 0.35 <= gap < 1.0, gap

    async def test_zero_delay_redelivers_at_once(self, js: JetStreamContext,
                                                 space: Space) -> None:
        probe = Probe(raising(Nak(delay=0), until=2))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(backoff=(5.0,))):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
        [gap] = probe.gaps(1)
        assert gap < 0.3, gap


    async def test_nak_on_last_delivery_is_termed_and_traced(
            self, js: JetStreamContext, space: Space,
            terminated: list[dict[str, Any]]) -> None:
        """A nak on the last delivery could never be redelivered: it is termed, with a reason."""
        tracer = RecordingTracer()
        probe = Probe(raising(Nak(delay=0.1)))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, error_tracer=tracer, **space.options(max_deliver=2)):
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: terminated, what="the term advisory")
        assert [c.delivered for c in probe.calls] == [1, 2]
        assert terminated[0]["reason"] == ("failed on attempt 2 of 2: Nak: the handler asked "
                                           "for redelivery after 0.1s")
        assert [(f.stage, f.deliveries, f.decision.action) for f in tracer.failures] == [
            ("business", 2, "term")]
        stats = service.stats.total()
        assert (stats.naked, stats.termed) == (1, 1)


class TestTerm:
    """| handler raises amebus.Term(reason=...) | term with the reason |"""

    async def test_termed_with_reason(self, js: JetStreamContext, space: Space,
                                      terminated: list[dict[str, Any]]) -> None:
        tracer = RecordingTracer()
        probe = Probe(raising(Term(reason="order 17 was cancelled")))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(ack_wait=1.0, error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
            await asyncio.sleep(1.2)  # past ack_wait: a termed message never comes back
        [advisory] = terminated
        assert advisory["reason"] == "order 17 was cancelled"
        assert advisory["stream_seq"] == 1
        assert advisory["deliveries"] == 1
        assert len(probe.calls) == 1
        assert info.num_redelivered == 0
        assert tracer.failures == []  # a signal, not a failure
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked, stats.termed) == (1, 0, 0, 1)


    async def test_not_dead_lettered(self, js: JetStreamContext, space: Space,
                                     terminated: list[dict[str, Any]]) -> None:
        probe = Probe(raising(Term(reason="duplicate order")))
        service = probe_service(space.subject("in"), probe)
        dead = space.subject("dead")
        async with serving(service, js, **space.options(dead_letter_subject=dead)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        assert await stored(js, space.stream, dead) == []
        assert terminated[0]["reason"] == "duplicate order"
        assert service.stats.total().dead_lettered == 0


class TestDecodeError:
    """| payload does not decode (DecodeError) | term with a reason naming the paths; traced
    (stage "pre-process") |"""

    @pytest.mark.parametrize(("payload", "named"), [
        (b'{"ns": "a", "order_id": "1"}', "required field missing @ $.amount"),
        (b'{"ns": "a", "order_id": "1", "amount": "lots"}', "$.amount"),
        (b"{not json", "not UTF-8 JSON"),
    ], ids=["missing", "wrong-type", "not-json"])
    async def test_termed_naming_the_path(self, js: JetStreamContext, space: Space,
                                          terminated: list[dict[str, Any]], payload: bytes,
                                          named: str) -> None:
        seen: list[Paid] = []

        async def paid(event: Paid) -> None:
            seen.append(event)

        class Orders(Service):
            on_paid = Route(space.subject("paid", "*"), paid)

        tracer = RecordingTracer()
        service = Orders()
        async with serving(service, js, **space.options(error_tracer=tracer)):
            await js.publish(space.subject("paid", "1"), payload)
            await js.publish(space.subject("paid", "2"),
                             b'{"ns": "a", "order_id": "2", "amount": 1.5}')
            await settled(js, space, 2)
            await eventually(lambda: terminated, what="the term advisory")
        assert seen == [Paid("a", "2", 1.5)]
        [advisory] = terminated
        assert advisory["stream_seq"] == 1
        assert "DecodeError" in advisory["reason"]
        assert named in advisory["reason"]
        [failure] = tracer.failures
        assert failure.stage == "pre-process"
        assert isinstance(failure.error, DecodeError)
        assert not failure.retryable
        assert failure.route == "on_paid"
        assert failure.decision.action == "term"
        assert failure.deliveries == 1
        stats = service.stats.routes["on_paid"]
        assert (stats.handled, stats.acked, stats.termed, stats.naked) == (2, 1, 1, 0)


    async def test_dead_lettered_when_configured(self, js: JetStreamContext,
                                                 space: Space) -> None:
        async def paid(event: Paid) -> None:
            pytest.fail("a payload that does not decode reached the handler")

        class Orders(Service):
            on_paid = Route(space.subject("paid", "*"), paid)

        dead = space.subject("dead")
        service = Orders()
        async with serving(service, js, **space.options(dead_letter_subject=dead)):
            await js.publish(space.subject("paid", "1"), b'{"ns": "a"}')
            await settled(js, space, 1)
            await eventually(lambda: service.stats.total().dead_lettered == 1,
                             what="the dead-letter copy")
        [letter] = await stored(js, space.stream, dead)
        headers = letter.headers or {}
        assert letter.data == b'{"ns": "a"}'
        assert headers["Amebus-Stage"] == "pre-process"
        assert headers["Amebus-Route"] == "on_paid"
        assert headers["Amebus-Deliveries"] == "1"
        assert "$.order_id" in headers["Amebus-Error"]


class TestNoRoute:
    """| subject resolves to no route | term; traced |"""

    async def test_consumer_without_filters(self, nc: Client, js: JetStreamContext,
                                            space: Space,
                                            terminated: list[dict[str, Any]]) -> None:
        handled: list[bytes] = []

        async def only(data: bytes) -> None:
            handled.append(data)

        class Narrow(Service):
            only_route = Route(space.subject("covered"), only)

        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        # Created by hand without filter subjects, so the server delivers what no route covers.
        await js.add_consumer(space.stream, ConsumerConfig(
            durable_name=space.durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=2.0))
        await js.publish(space.subject("covered"), b"yes")
        await js.publish(space.subject("stray", "x"), b"no")
        psub = await js.pull_subscribe_bind(space.durable, space.stream)

        async def messages() -> AsyncIterator[Msg]:
            for msg in await psub.fetch(2, timeout=2):
                yield msg

        tracer = RecordingTracer()
        consumer = JetStreamConsumer(Narrow(), nc, tracer, settings=Settings(ack_wait=2.0))
        await consumer.run(messages())
        await settled(js, space, 2)
        await eventually(lambda: terminated, what="the term advisory")
        assert handled == [b"yes"]
        [advisory] = terminated
        assert advisory["stream_seq"] == 2
        assert "NoRouteError" in advisory["reason"]
        assert space.subject("stray", "x") in advisory["reason"]
        [failure] = tracer.failures
        assert isinstance(failure.error, NoRouteError)
        assert (failure.stage, failure.route, failure.retryable) == ("pre-process", None, False)
        assert failure.subject == space.subject("stray", "x")


class TestFailureWithDeliveriesLeft:
    """| any other exception, deliveries left | nak with the backoff delay for this delivery
    count; traced (stage "business") |"""

    async def test_backoff_per_delivery(self, js: JetStreamContext, space: Space) -> None:
        tracer = RecordingTracer()
        probe = Probe(raising(RuntimeError("flaky"), until=4))
        service = probe_service(space.subject(">"), probe)
        options = space.options(backoff=(0.2, 0.6), max_deliver=5, error_tracer=tracer)
        async with serving(service, js, **options):
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: len(probe.calls) >= 2, what="the second delivery")
            info = await js.consumer_info(space.stream, space.durable)
            assert info.num_redelivered == 1
            info = await settled(js, space, 1)
        assert [c.delivered for c in probe.calls] == [1, 2, 3, 4]
        gaps = probe.gaps(1)
        for gap, delay in zip(gaps, (0.2, 0.6, 0.6), strict=True):
            assert delay - 0.05 <= gap < delay + 0.4, gaps
        assert [f.decision for f in tracer.failures] == [
            Decision.nak(0.2), Decision.nak(0.6), Decision.nak(0.6)]
        assert [f.deliveries for f in tracer.failures] == [1, 2, 3]
        assert all(f.stage == "business" and f.retryable for f in tracer.failures)
        assert all(f.stream == space.stream and f.stream_seq == 1 for f in tracer.failures)
        assert info.delivered.consumer_seq == 4
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked, stats.termed) == (4, 1, 3, 0)


class TestFailureOnLastDelivery:
    """| any other exception, last delivery | term with a reason; if dead_letter_subject set,
    first publish the original payload and headers there, with headers for the original
    subject, stream sequence, deliveries and error; traced |"""

    async def test_termed_after_max_deliver(self, js: JetStreamContext, space: Space,
                                            terminated: list[dict[str, Any]]) -> None:
        tracer = RecordingTracer()
        probe = Probe(raising(RuntimeError("boom")))
        service = probe_service(space.subject(">"), probe)
        options = space.options(ack_wait=1.0, max_deliver=2, error_tracer=tracer)
        async with serving(service, js, **options):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
            await asyncio.sleep(1.2)  # past ack_wait: nothing comes back
        assert [c.delivered for c in probe.calls] == [1, 2]
        [advisory] = terminated
        assert advisory["deliveries"] == 2
        assert advisory["reason"] == "failed on attempt 2 of 2: RuntimeError: boom"
        assert [f.decision.action for f in tracer.failures] == ["nak", "term"]
        assert tracer.failures[-1].stage == "business"
        assert info.num_ack_pending == 0
        stats = service.stats.total()
        assert (stats.naked, stats.termed, stats.dead_lettered) == (1, 1, 0)

    async def test_dead_lettered_before_term(self, js: JetStreamContext, space: Space,
                                             terminated: list[dict[str, Any]]) -> None:
        probe = Probe(raising(ValueError("no such\ncustomer")))
        service = probe_service(space.subject("in", ">"), probe)
        dead = space.subject("dead")
        options = space.options(max_deliver=2, dead_letter_subject=dead)
        async with serving(service, js, **options):
            await js.publish(space.subject("in", "o1"), b'{"id": 1}',
                             headers={"X-Trace": "t-1", "Nats-Msg-Id": "m-1"})
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        [letter] = await stored(js, space.stream, dead)
        assert letter.data == b'{"id": 1}'
        headers = letter.headers or {}
        assert headers["X-Trace"] == "t-1"
        assert headers["Amebus-Original-Msg-Id"] == "m-1"
        assert headers["Amebus-Original-Subject"] == space.subject("in", "o1")
        assert headers["Amebus-Original-Stream"] == space.stream
        assert headers["Amebus-Original-Sequence"] == "1"
        assert headers["Amebus-Deliveries"] == "2"
        assert headers["Amebus-Error"] == "ValueError: no such customer"
        assert letter.seq is not None and letter.seq > 1  # published before the term
        stats = service.stats.total()
        assert (stats.termed, stats.dead_lettered) == (1, 1)
        assert [c.delivered for c in probe.calls] == [1, 2]


    async def test_dead_letter_publish_failure_keeps_the_message(
            self, js: JetStreamContext, space: Space, terminated: list[dict[str, Any]],
            unique_name: Callable[..., str]) -> None:
        """The dead-letter stream is gone once serving (serve() checks it exists): the last
        attempt is nak'ed instead of termed without its copy; each redelivery retries the copy
        without running the handler again, and only on the server's last delivery is it
        termed with both reasons. Every step is traced."""
        tracer = RecordingTracer()
        probe = Probe(raising(RuntimeError("boom")))
        service = probe_service(space.subject(">"), probe)
        nowhere = unique_name("nodlq").lower() + ".dead"
        options = space.options(max_deliver=2, server_max_deliver=4,
                                dead_letter_subject=nowhere, error_tracer=tracer,
                                dead_letter_stream=space.stream + "_DLQ")
        async with serving(service, js, **options):
            await js.delete_stream(space.stream + "_DLQ")
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: terminated, what="the term advisory")
        assert [c.delivered for c in probe.calls] == [1, 2]  # the handler ran twice only
        assert [(f.stage, f.deliveries, f.decision.action) for f in tracer.failures] == [
            ("business", 1, "nak"), ("business", 2, "term"), ("post-process", 2, "nak"),
            ("business", 3, "term"), ("post-process", 3, "nak"),
            ("business", 4, "term"), ("post-process", 4, "term")]
        reason = terminated[0]["reason"]
        assert reason.startswith("failed or crashed 2 times (max_deliver 2); not run again; "
                                 "the dead-letter copy failed too: ")
        assert reason.endswith("(on the server's last delivery, 4 of 4)")
        stats = service.stats.total()
        assert (stats.termed, stats.dead_lettered, stats.naked) == (1, 0, 3)


class TestTimeout:
    """| handler exceeds its timeout | cancelled, then as "any other exception" |"""

    @pytest.mark.parametrize("where", ["service", "route"])
    async def test_cancelled_and_retried(self, js: JetStreamContext, space: Space,
                                         where: str) -> None:
        async def slow_once(msg: Msg, call: Call) -> None:
            if call.delivered == 1:
                await asyncio.sleep(30)

        tracer = RecordingTracer()
        probe = Probe(slow_once)
        if where == "route":
            service = probe_service(space.subject(">"), probe, timeout=0.3)
            options = space.options(error_tracer=tracer)
        else:
            service = probe_service(space.subject(">"), probe)
            options = space.options(error_tracer=tracer, timeout=0.3)
        async with serving(service, js, **options):
            started = time.monotonic()
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            elapsed = time.monotonic() - started
        assert elapsed < 1.5  # the timeout plus the backoff, well under ack_wait (2 s)
        assert [c.delivered for c in probe.cancelled] == [1]
        assert [c.delivered for c in probe.calls] == [1, 2]
        [failure] = tracer.failures
        assert isinstance(failure.error, HandlerTimeoutError)
        assert (failure.stage, failure.decision) == ("business", Decision.nak(0.1))
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.naked) == (2, 1, 1)

    async def test_timeout_on_last_delivery_terms(self, js: JetStreamContext, space: Space,
                                                  terminated: list[dict[str, Any]]) -> None:
        async def slow(msg: Msg, call: Call) -> None:
            await asyncio.sleep(30)

        probe = Probe(slow)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(timeout=0.2, max_deliver=1)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        assert "HandlerTimeoutError" in terminated[0]["reason"]
        assert len(probe.cancelled) == 1


class TestShutdownBeforeStart:
    """| shutdown before the handler started | nak without delay, so another instance takes
    it at once |"""

    async def test_buffered_messages_go_back_at_once(self, js: JetStreamContext,
                                                     space: Space) -> None:
        release = asyncio.Event()

        async def block_first(msg: Msg, call: Call) -> None:
            if call.seq == 1:
                await release.wait()

        first = Probe(block_first)
        service = probe_service(space.subject(">"), first)
        # ack_wait 30 s: anything back within a few seconds was nak'ed, not timed out.
        options = space.options(ack_wait=30.0, concurrency=1, shutdown_timeout=5.0)
        async with serving(service, js, **options) as task:
            for i in range(5):
                await js.publish(space.subject("in", str(i)), b"x")

            async def all_delivered() -> bool:
                info = await js.consumer_info(space.stream, space.durable)
                return info.num_ack_pending == 5

            await eventually(all_delivered, what="all five pulled")
            assert [c.seq for c in first.calls] == [1]
            assert service.stats.buffered == 4
            task.cancel()
            # Shutdown has begun once the pull engine let go of the four it held.
            await eventually(lambda: service.stats.buffered == 0, what="pulling stopped")
            release.set()  # the running handler finishes within shutdown_timeout
        assert [c.seq for c in first.calls] == [1]  # the others never started here
        stopped = time.monotonic()
        second = Probe()
        async with serving(probe_service(space.subject(">"), second), js, **options):
            info = await settled(js, space, 5)
        assert time.monotonic() - stopped < 3.0
        assert sorted((c.seq, c.delivered) for c in second.calls) == [
            (2, 2), (3, 2), (4, 2), (5, 2)]
        assert info.num_redelivered == 0
        stats = service.stats.total()
        assert (stats.handled, stats.acked) == (1, 1)


class TestShutdownPastTimeout:
    """| shutdown while the handler runs past shutdown_timeout | cancelled, nak without delay;
    never acked |"""

    async def test_running_handler_cancelled_and_given_back(self, js: JetStreamContext,
                                                            space: Space) -> None:
        async def stuck(msg: Msg, call: Call) -> None:
            if call.delivered == 1:
                await asyncio.sleep(30)

        first = Probe(stuck)
        service = probe_service(space.subject(">"), first)
        options = space.options(ack_wait=30.0, shutdown_timeout=0.3)
        async with serving(service, js, **options) as task:
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: first.calls, what="the handler started")
            task.cancel()
            stopping = time.monotonic()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert time.monotonic() - stopping < 1.5
        assert [c.delivered for c in first.cancelled] == [1]
        stats = service.stats.total()
        assert (stats.acked, stats.naked, stats.termed) == (0, 1, 0)
        second = Probe()
        async with serving(probe_service(space.subject(">"), second), js, **options):
            await settled(js, space, 1, timeout=3.0)  # far sooner than ack_wait (30 s)
        assert [c.delivered for c in second.calls] == [2]


# -- beyond the table -----------------------------------------------------------------------


class TestInProgress:
    """In-progress signals keep a handler running 3x ack_wait from being redelivered."""

    async def test_long_handler_delivered_once(self, js: JetStreamContext,
                                               space: Space) -> None:
        async def long(msg: Msg, call: Call) -> None:
            await asyncio.sleep(3.0)

        probe = Probe(long)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(ack_wait=1.0, concurrency=2)):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1, timeout=6.0)
        assert [c.delivered for c in probe.calls] == [1]
        assert info.num_redelivered == 0
        assert info.delivered.consumer_seq == 1

    async def test_buffered_messages_kept_alive(self, js: JetStreamContext,
                                                space: Space) -> None:
        """Messages pulled behind a long handler are not redelivered while they wait."""

        async def first_long(msg: Msg, call: Call) -> None:
            if call.seq == 1:
                await asyncio.sleep(2.5)

        probe = Probe(first_long)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(ack_wait=1.0, concurrency=1)):
            for i in range(3):
                await js.publish(space.subject("in", str(i)), b"x")
            info = await settled(js, space, 3, timeout=6.0)
        assert [(c.seq, c.delivered) for c in probe.calls] == [(1, 1), (2, 1), (3, 1)]
        assert info.delivered.consumer_seq == 3


class TestTracerDecision:
    """An ErrorTracer returning a Decision overrides the action."""

    async def test_ack_instead_of_nak(self, js: JetStreamContext, space: Space) -> None:
        tracer = RecordingTracer(lambda failure: Decision.ack())
        probe = Probe(raising(RuntimeError("ignored")))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(backoff=(0.1,), error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await asyncio.sleep(0.4)  # a nak would have redelivered by now
        assert len(probe.calls) == 1
        assert tracer.failures[0].decision == Decision.nak(0.1)  # what amebus would have done
        stats = service.stats.total()
        assert (stats.acked, stats.naked) == (1, 0)

    async def test_nak_instead_of_term(self, js: JetStreamContext, space: Space,
                                       terminated: list[dict[str, Any]]) -> None:
        """A decode failure is termed, unless the tracer asks for another delivery."""

        def decide(failure: Failure) -> Decision | None:
            return Decision.nak(0.3) if failure.deliveries == 1 else None

        tracer = RecordingTracer(decide)
        probe = Probe(raising(DecodeError("bad payload")))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        assert [c.delivered for c in probe.calls] == [1, 2]
        [gap] = probe.gaps(1)
        assert 0.25 <= gap < 1.0
        assert "bad payload" in terminated[0]["reason"]

    async def test_custom_term_reason(self, js: JetStreamContext, space: Space,
                                      terminated: list[dict[str, Any]]) -> None:
        tracer = RecordingTracer(lambda failure: Decision.term("sent to the ops queue"))
        probe = Probe(raising(RuntimeError("x")))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        assert terminated[0]["reason"] == "sent to the ops queue"
        assert len(probe.calls) == 1

    async def test_raising_tracer_keeps_the_decision(self, js: JetStreamContext,
                                                     space: Space) -> None:
        def broken(failure: Failure) -> Decision | None:
            raise RuntimeError("tracer down")

        probe = Probe(raising(RuntimeError("x"), until=2))
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(error_tracer=RecordingTracer(broken))):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
        assert [c.delivered for c in probe.calls] == [1, 2]


    async def test_term_with_dead_letter(self, js: JetStreamContext, space: Space,
                                         terminated: list[dict[str, Any]]) -> None:
        """A tracer may term early and still ask for the dead-letter copy."""
        tracer = RecordingTracer(lambda failure: Decision.term("poison", dead_letter=True))
        probe = Probe(raising(RuntimeError("x")))
        service = probe_service(space.subject("in"), probe)
        dead = space.subject("dead")
        options = space.options(max_deliver=5, dead_letter_subject=dead, error_tracer=tracer)
        async with serving(service, js, **options):
            await js.publish(space.subject("in"), b"payload")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
        [letter] = await stored(js, space.stream, dead)
        assert letter.data == b"payload"
        assert (letter.headers or {})["Amebus-Deliveries"] == "1"
        assert terminated[0]["reason"] == "poison"
        assert len(probe.calls) == 1


class TestHandlerRaisesCancelledError:
    """A handler that raises CancelledError without being cancelled (it awaited a future
    cancelled elsewhere) fails like any other exception; its worker keeps serving."""

    async def test_retried_and_worker_survives(self, js: JetStreamContext,
                                               space: Space) -> None:
        async def cancelled_elsewhere(msg: Msg, call: Call) -> None:
            if call.delivered == 1:
                future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                future.cancel()
                await future

        tracer = RecordingTracer()
        probe = Probe(cancelled_elsewhere)
        service = probe_service(space.subject(">"), probe)
        options = space.options(concurrency=1, error_tracer=tracer)
        async with serving(service, js, **options) as task:
            await js.publish(space.subject("in", "1"), b"x")
            await js.publish(space.subject("in", "2"), b"x")
            await settled(js, space, 2)
            assert not task.done()
        assert sorted((c.seq, c.delivered) for c in probe.calls) == [
            (1, 1), (1, 2), (2, 1), (2, 2)]
        assert [type(f.error) for f in tracer.failures] == [asyncio.CancelledError] * 2
        assert all(f.decision == Decision.nak(0.1) for f in tracer.failures)


class TestHandlerSettlesItself:
    """A handler that settles the message itself and then raises is not settled twice."""

    async def test_ack_then_raise(self, js: JetStreamContext, space: Space) -> None:
        async def ack_then_fail(msg: Msg, call: Call) -> None:
            await msg.ack()
            raise RuntimeError("after the ack")

        tracer = RecordingTracer()
        probe = Probe(ack_then_fail)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(backoff=(0.1,), error_tracer=tracer)):
            await js.publish(space.subject("in"), b"x")
            info = await settled(js, space, 1)
            await asyncio.sleep(0.5)  # a nak after the ack would redeliver within 0.1 s
            after = await js.consumer_info(space.stream, space.durable)
        assert len(probe.calls) == 1
        assert info.num_redelivered == 0
        assert after.delivered.consumer_seq == 1
        assert len(tracer.failures) == 1  # still reported
        stats = service.stats.total()
        assert (stats.handled, stats.naked, stats.termed) == (1, 0, 0)

    async def test_term_then_return(self, js: JetStreamContext, space: Space,
                                    terminated: list[dict[str, Any]]) -> None:
        async def term_itself(msg: Msg, call: Call) -> None:
            await msg.term()

        probe = Probe(term_itself)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options()):
            await js.publish(space.subject("in"), b"x")
            await settled(js, space, 1)
            await eventually(lambda: terminated, what="the term advisory")
            await asyncio.sleep(0.3)
        assert len(terminated) == 1
        stats = service.stats.total()
        assert (stats.handled, stats.acked, stats.termed) == (1, 0, 0)


class TestConcurrency:
    """``concurrency`` handlers run at once, no more."""

    async def test_bounded(self, js: JetStreamContext, space: Space) -> None:
        running = peak = 0

        async def busy(msg: Msg, call: Call) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.05)
            running -= 1

        probe = Probe(busy)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options(concurrency=3)):
            for i in range(12):
                await js.publish(space.subject("in", str(i)), b"x")
            started = time.monotonic()
            await settled(js, space, 12)
            elapsed = time.monotonic() - started
        assert peak == 3
        assert elapsed < 12 * 0.05  # in parallel, not one after another
        assert len(probe.calls) == 12


class TestStats:
    """``stats`` counters match what the server saw."""

    async def test_counters(self, js: JetStreamContext, space: Space) -> None:
        def mixed(msg: Msg, call: Call) -> None:
            kind = msg.subject.split(".")[1]
            if kind == "term":
                raise Term("no")
            if kind == "nak" and call.delivered == 1:
                raise Nak(delay=0.1)

        probe = Probe(mixed)
        service = probe_service(space.subject(">"), probe)
        async with serving(service, js, **space.options()):
            for kind in ("ok", "ok", "ok", "term", "nak"):
                await js.publish(space.subject(kind), b"x")
            await settled(js, space, 5)
            await asyncio.sleep(0.5)  # a watchdog tick refreshes received/in_flight
            stats = service.stats
            assert stats.received == 6
            assert (stats.in_flight, stats.buffered) == (0, 0)
        total = stats.total()
        assert (total.handled, total.acked, total.naked, total.termed) == (6, 4, 1, 1)
        assert total.handler_seconds >= 0
        assert set(stats.routes) == {"everything"}
