"""OpenTelemetry traces (``pip install 'amebus[otel]'``; needs only ``opentelemetry-api``).

Publishing (``Event.publish``, ``publish_many``, result events) opens a producer span and
injects its W3C ``traceparent``/``tracestate`` into the message headers; each delivery opens a
consumer span, the child of the extracted context, named ``process <route pattern>``, with the
messaging semantic-convention attributes and amebus's outcome. A handler's result events are
published inside that span, so they continue the input's trace. A redelivery seen by the same
process links to the span of the delivery before it.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from amebus.events import EVENT_TYPE_HEADER
from amebus.settlement import reply_meta
from amebus.telemetry import publishing
from amebus.telemetry.logs import outcome_of
from amebus.telemetry.observer import BaseObserver, Serving

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.handlers import Handler
    from amebus.telemetry.publishing import PublishDone
    from amebus.tracing import Decision, Failure

__all__ = ["Tracing"]

_RECENT = 10_000  # redeliveries remembered for links, per Tracing


class Tracing(BaseObserver):
    """Consumer spans for every delivery and producer spans for every publish.

    One instance may observe several services at once.

    Args:
        tracer_provider: default: the global one (``opentelemetry.trace``).
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        self._tracer = trace.get_tracer("amebus", tracer_provider=tracer_provider)
        self._open: dict[int, tuple[trace.Span, object, tuple[str, int]]] = {}
        self._active: ContextVar[trace.Span | None] = ContextVar("amebus_span", default=None)
        self._earlier: OrderedDict[tuple[str, int], trace.SpanContext] = OrderedDict()
        self._servings = 0
        self._servings_by_handler: dict[int, Serving] = {}

    def instrument_publishing(self) -> None:
        """Trace every publish of this process (done while serving; call it in a process that
        only publishes)."""
        publishing.add_publish_observer(self)

    def uninstrument_publishing(self) -> None:
        """Stop tracing publishes."""
        publishing.remove_publish_observer(self)

    async def start(self, serving: Serving) -> None:
        """Trace this service's deliveries, and publishing."""
        self._servings += 1
        for handler in serving.consumer.handlers.values():
            self._servings_by_handler[id(handler)] = serving
        self.instrument_publishing()

    async def stop(self) -> None:
        """The last service observed stopped: stop tracing publishes."""
        self._servings -= 1
        if self._servings <= 0:
            self.uninstrument_publishing()

    # -- consuming -----------------------------------------------------------------------------

    def delivery_started(self, msg: Msg, handler: Handler) -> None:
        """Open the delivery's consumer span and make it current in the worker."""
        headers = msg.headers
        parent = propagate.extract(headers) if headers else None
        stream, seq, deliveries = reply_meta(msg.reply)
        route = getattr(handler, "route", None)
        pattern = route.pattern if route is not None else handler.name
        attributes: dict[str, Any] = {
            "messaging.system": "nats",
            "messaging.operation.name": "process",
            "messaging.operation.type": "process",
            "messaging.destination.name": msg.subject,
            "messaging.destination.template": pattern,
            "messaging.nats.stream": stream,
            "messaging.nats.message.stream_sequence": seq,
            "messaging.nats.message.delivery_count": deliveries,
            "amebus.route": handler.name,
        }
        serving = self._servings_by_handler.get(id(handler))
        if serving is not None:
            attributes["messaging.consumer.group.name"] = serving.durable
        msg_id = headers.get("Nats-Msg-Id") if headers else None
        if msg_id:
            attributes["messaging.message.id"] = msg_id
        earlier = self._earlier.pop((stream, seq), None)
        links = [Link(earlier, {"amebus.link": "earlier delivery"})] if earlier else None
        span = self._tracer.start_span(f"process {pattern}", context=parent,
                                       kind=SpanKind.CONSUMER, attributes=attributes,
                                       links=links)
        token = otel_context.attach(trace.set_span_in_context(span))
        self._active.set(span)
        self._open[id(msg)] = (span, token, (stream, seq))

    def failed(self, failure: Failure) -> None:
        """Record the failure on the delivery's span."""
        span = self._active.get()
        if span is not None:
            span.record_exception(failure.error, attributes={"amebus.stage": failure.stage})

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """Put the outcome on the span and end it."""
        entry = self._open.pop(id(msg), None)
        if entry is None:
            return  # never started (given back unstarted, or no route)
        span, token, key = entry
        serving = self._servings_by_handler.get(id(handler))
        stopping = serving is not None and serving.consumer.stopping
        outcome = outcome_of(decision, handler, returned=stopping)
        if decision.action == "ack":
            span.set_attribute("amebus.outcome", outcome)
        elif decision.action == "nak":
            span.set_attributes({"amebus.outcome": outcome, "amebus.nak_delay": decision.delay})
            self._remember(key, span.get_span_context())
        else:
            span.set_attributes({"amebus.outcome": outcome,
                                 "amebus.term_reason": decision.reason,
                                 "amebus.dead_lettered": decision.dead_letter})
            span.set_status(Status(StatusCode.ERROR, decision.reason))
        span.end()
        self._active.set(None)
        with contextlib.suppress(Exception):  # settled in another context: nothing to undo
            otel_context.detach(token)  # type: ignore[arg-type]

    def _remember(self, key: tuple[str, int], span_context: trace.SpanContext) -> None:
        self._earlier[key] = span_context
        if len(self._earlier) > _RECENT:
            self._earlier.popitem(last=False)

    # -- publishing ----------------------------------------------------------------------------

    def publish_started(self, subjects: Sequence[str],
                        headers: Sequence[dict[str, str]]) -> PublishDone:
        """Open the producer span and inject its context into every message's headers."""
        types = {h.get(EVENT_TYPE_HEADER, "") for h in headers}
        name = "publish" + (f" {next(iter(types))}" if len(types) == 1 else "")
        attributes: dict[str, Any] = {"messaging.system": "nats",
                                      "messaging.operation.name": "publish",
                                      "messaging.operation.type": "send"}
        if len(subjects) == 1:
            attributes["messaging.destination.name"] = subjects[0]
        else:
            attributes["messaging.batch.message_count"] = len(subjects)
        span = self._tracer.start_span(name, kind=SpanKind.PRODUCER, attributes=attributes)
        carrier = trace.set_span_in_context(span)
        for hdrs in headers:
            propagate.inject(hdrs, context=carrier)

        def done(error: BaseException | None) -> None:
            if error is not None:
                span.record_exception(error)
                span.set_status(Status(StatusCode.ERROR, str(error)[:200]))
            span.end()

        return done

