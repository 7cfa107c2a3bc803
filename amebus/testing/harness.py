"""Unit-test a service without a server: feed a message, get the settlement it would receive.

The message runs through the real :class:`~amebus.consumer.JetStreamConsumer` (the same
routing, decoding, timeouts, tracing and settlement code); only the connection is a recorder,
and the decision is read back from the exact bytes that would go to the server.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import attrs
from nats.aio.msg import Msg

from amebus.consumer import JetStreamConsumer
from amebus.dispatch import dispatch_of
from amebus.events import Event, subject_of
from amebus.service import Service
from amebus.serving import settings_of
from amebus.settlement import PROGRESS, Settings, parse
from amebus.tracing import Decision, ErrorTracer, Failure

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["Outcome", "ServiceHarness"]


@attrs.frozen
class Outcome:
    """What happened to one fed message.

    Attributes:
        decision: the settlement sent (``ack``, ``nak`` with ``delay``, ``term`` with ``reason``),
            parsed from the bytes sent on the reply subject; None if the handler settled the
            message itself.
        route: the name of the route that handled it (None: no route).
        published: events the handler returned, which the real consumer would publish.
        dead_letters: (subject, payload, headers) copies published to the dead-letter subject.
        failures: what the error tracer received.
        progress: how many in-progress signals were sent while the handler ran.
        skipped: no route handles the subject and the consumer takes the whole stream, so the
            message was acked unhandled (counted in ``stats.skipped`` when serving).
        held: True if the consumer was paused: the server would hold the message, so nothing
            ran (it runs on :meth:`ServiceHarness.resume`, or once the pause has ended).
    """

    decision: Decision | None
    route: str | None
    published: tuple[Any, ...]
    dead_letters: tuple[tuple[str, bytes, dict[str, str]], ...]
    failures: tuple[Failure, ...]
    progress: int
    skipped: bool = False
    held: bool = False


class _Wire:
    """Stands in for the nats-py client and its JetStream context: records what is sent."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.stored: list[tuple[str, bytes, dict[str, str]]] = []

    def jetstream(self) -> _Wire:
        return self

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        reply: str = "",
        headers: dict[str, str] | None = None,
        **_: Any,
    ) -> None:
        if subject.startswith("$JS.ACK."):
            self.sent.append((subject, payload))
        else:
            self.stored.append((subject, payload, dict(headers or {})))


class _Recorder:
    def __init__(self, tracer: ErrorTracer | None) -> None:
        self.failures: list[Failure] = []
        self.tracer = tracer

    def trace(self, failure: Failure) -> Decision | None:
        self.failures.append(failure)
        return self.tracer.trace(failure) if self.tracer is not None else None


class _Consumer(JetStreamConsumer):
    published: list[Any]

    async def publish_events(self, events: list[Any], msg: Msg | None = None) -> None:
        for event in events:
            subject_of(event)  # an invalid subject fails here exactly as it would for real
        self.published.extend(events)


class ServiceHarness:
    """Feed messages to a service in memory and see how each would be settled.

    >>> harness = ServiceHarness(Orders(db))                       # doctest: +SKIP
    >>> outcome = await harness.feed(OrderPaid(order_id="1"))      # doctest: +SKIP
    >>> outcome.decision                                           # doctest: +SKIP
    Decision(action='ack', delay=0.0, reason='', dead_letter=False)

    A subject no route handles is settled as the served consumer would settle it: acked
    unhandled (``Outcome.skipped``) when the consumer takes the whole stream, which is what
    ``server_filter`` ``"auto"`` (the default) and ``"stream"`` do; termed (and dead-lettered)
    with ``"routes"`` or on a work-queue stream, where the server filters by route and such a
    subject only arrives through a nested service that has no route for it.

    Args:
        service: the service instance under test.
        error_tracer: also receives every failure (the harness records them regardless).
        work_queue: the service's stream is a work-queue stream (``server_filter="auto"``
            then filters by route, as ``bind_consumer`` does).
        overrides: configuration overrides, as for ``serve`` (``max_deliver=3``,
            ``server_filter="routes"``, ...).
    """

    def __init__(
        self, service: Service, *, error_tracer: ErrorTracer | None = None,
        work_queue: bool = False, **overrides: Any
    ) -> None:
        self.service = service
        self.settings: Settings = settings_of(type(service), overrides)
        mode = overrides.get("server_filter", type(service).server_filter)
        self.filtered = mode == "routes" or (mode == "auto" and work_queue)
        """Whether the served consumer would filter by route (then unrouted is termed)."""
        self._tracer = error_tracer or type(service).error_tracer
        self._sequence = 0
        self._paused_until: datetime.datetime | None = None
        self.held: list[tuple[Event | str, bytes | None, Mapping[str, str] | None, int]] = []
        self.released: list[Outcome] = []  # outcomes of held messages run by a later feed

    # -- pause, as the server's consumer pause (amebus.control.pause) ------------------------

    def pause(self, until: datetime.datetime | None = None) -> None:
        """Pause as ``amebus pause`` would: fed messages are held, not run, until ``until``
        (an aware datetime; None: until :meth:`resume`)."""
        if until is not None and until.tzinfo is None:
            msg = f"until {until!r} has no timezone; give an aware datetime (UTC)"
            raise ValueError(msg)
        self._paused_until = until or datetime.datetime.max.replace(tzinfo=datetime.UTC)

    @property
    def paused(self) -> bool:
        """True while a pause holds messages (its deadline not yet reached)."""
        until = self._paused_until
        return until is not None and datetime.datetime.now(datetime.UTC) < until

    async def resume(self) -> list[Outcome]:
        """End the pause (if any) and run the held messages in order; their outcomes."""
        self._paused_until = None
        held, self.held = self.held, []
        return [await self.feed(m, p, headers=h, deliveries=d) for m, p, h, d in held]

    async def feed(
        self,
        message: Event | str,
        payload: bytes | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        deliveries: int = 1,
    ) -> Outcome:
        """Run one message (an Event, or a subject and its payload bytes) and settle it.

        ``deliveries`` is the delivery count the server would report (1 the first time), so
        the last-delivery rules can be exercised directly. While :attr:`paused`, the message
        is held (``Outcome.held``); once a pause's deadline has passed, held messages run
        first, as the server would deliver them.
        """
        if self.paused:
            self.held.append((message, payload, headers, deliveries))
            return Outcome(decision=None, route=None, published=(), dead_letters=(),
                           failures=(), progress=0, held=True)
        if self.held:  # the pause ended by its deadline: the held ones go first
            self.released.extend(await self.resume())
        if isinstance(message, Event):  # exactly what Event.publish would send
            out = message.encode(headers=headers)
            subject, payload, headers = out.subject, out.payload, out.headers
        else:
            subject = message
        self._sequence += 1
        wire = _Wire()
        recorder = _Recorder(self._tracer)
        consumer = _Consumer(self.service, cast("Client", wire), recorder,
                             settings=self.settings, resolver=dispatch_of(self.service),
                             skip_unrouted=not self.filtered)
        consumer.published = []
        reply = (
            f"$JS.ACK.HARNESS.{type(self.service).__name__}.{deliveries}."
            f"{self._sequence}.{self._sequence}.{time.time_ns()}.0"
        )
        msg = Msg(
            _client=cast("Client", wire),
            subject=subject,
            reply=reply,
            data=payload or b"",
            headers=dict(headers) if headers else None,
        )
        queue = [msg]

        async def take() -> Msg | None:
            return queue.pop() if queue else None

        await consumer.run_from(take)
        settlements = [data for _, data in wire.sent if data != PROGRESS]
        handler = consumer.resolve(subject)
        return Outcome(
            decision=parse(settlements[-1]) if settlements else None,
            route=handler.name if handler is not None else None,
            published=tuple(consumer.published),
            dead_letters=tuple(wire.stored),
            failures=tuple(recorder.failures),
            progress=sum(1 for _, data in wire.sent if data == PROGRESS),
            skipped=consumer.skipped > 0,
        )

