"""OpenTelemetry traces across two services over a real nats-server, exported to the SDK's
in-memory exporter: publish -> consume -> result event -> consume, and across a retry."""

from __future__ import annotations

import attrs
from _support import Space, eventually, serving
from nats.aio.client import Client
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import amebus
from amebus.telemetry import Tracing, publishing


async def test_a_trace_from_publish_through_a_result_event_and_a_retry(
        nc: Client, space: Space) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing = Tracing(provider)
    placed_subject, paid_subject = space.subject("placed"), space.subject("paid")

    @attrs.frozen
    class Placed(amebus.Event):
        subject = placed_subject
        order: str

    @attrs.frozen
    class Paid(amebus.Event):
        subject = paid_subject
        order: str

    class Orders(amebus.Service):
        @amebus.Route(Placed)
        async def placed(self, event: Placed) -> Paid:
            return Paid(event.order)

    attempts: list[int] = []

    class Shipping(amebus.Service):
        @amebus.Route(Paid)
        async def paid(self, event: Paid) -> None:
            attempts.append(1)
            if len(attempts) == 1:
                raise RuntimeError("first delivery fails")

        @amebus.Route(space.subject("bad"))
        async def bad(self, payload: bytes) -> None:
            raise amebus.Term("not ours")

    js = nc.jetstream()
    options = space.options()
    async with serving(Orders(), nc, observer=tracing, **options), \
            serving(Shipping(), nc, observer=tracing,
                    **{**options, "durable": space.durable + "_ship"}):
        await Placed("o1").publish(js, msg_id="m-1")
        await eventually(lambda: len(attempts) == 2, what="the retry handled")
        await js.publish(space.subject("bad"), b"")
        await eventually(lambda: len([s for s in exporter.get_finished_spans()
                                      if s.kind == SpanKind.CONSUMER]) == 4,
                         what="four consumer spans ended")
    assert publishing.current is None  # stopped: publishing is plain again
    spans = exporter.get_finished_spans()

    def one(name: str, kind: SpanKind) -> list[ReadableSpan]:
        return [s for s in spans if s.name == name and s.kind == kind]

    [publish] = [s for s in one(f"publish {Placed.event_type}", SpanKind.PRODUCER)]
    [consume_placed] = one(f"process {placed_subject}", SpanKind.CONSUMER)
    [result] = one(f"publish {Paid.event_type}", SpanKind.PRODUCER)
    first, second = sorted(one(f"process {paid_subject}", SpanKind.CONSUMER),
                           key=lambda s: s.attributes["messaging.nats.message.delivery_count"])  # type: ignore[index]

    def parent_of(span: ReadableSpan) -> int | None:
        return span.parent.span_id if span.parent is not None else None

    trace_ids = {s.context.trace_id for s in (publish, consume_placed, result, first, second)}
    assert len(trace_ids) == 1  # one trace from the first publish to the retry
    assert publish.parent is None
    assert parent_of(consume_placed) == publish.context.span_id
    assert parent_of(result) == consume_placed.context.span_id  # the result continues it
    assert parent_of(first) == parent_of(second) == result.context.span_id
    assert [link.context.span_id for link in second.links] == [first.context.span_id]

    attributes = dict(consume_placed.attributes or {})
    assert attributes["messaging.system"] == "nats"
    assert attributes["messaging.destination.name"] == placed_subject
    assert attributes["messaging.destination.template"] == placed_subject
    assert attributes["messaging.message.id"] == "m-1"
    assert attributes["messaging.nats.message.stream_sequence"] == 1
    assert attributes["messaging.nats.message.delivery_count"] == 1
    assert attributes["messaging.consumer.group.name"] == space.durable
    assert attributes["amebus.outcome"] == "acked"
    assert first.attributes["amebus.outcome"] == "naked"  # type: ignore[index]
    assert first.attributes["amebus.nak_delay"] == 0.1  # type: ignore[index]
    assert [e.attributes["exception.message"] for e in first.events  # type: ignore[index]
            ] == ["first delivery fails"]
    assert second.attributes["amebus.outcome"] == "acked"  # type: ignore[index]
    assert second.status.status_code != StatusCode.ERROR
    [termed] = one(f"process {space.subject('bad')}", SpanKind.CONSUMER)
    assert termed.parent is None  # published by plain nats-py: no trace context to continue
    assert termed.attributes["amebus.outcome"] == "termed"  # type: ignore[index]
    assert termed.attributes["amebus.term_reason"] == "not ours"  # type: ignore[index]
    assert termed.status.status_code == StatusCode.ERROR
