"""Prometheus metrics of a serving service (``pip install 'amebus[prometheus]'``).

Counters and histograms are updated per delivery through the observer hooks; gauges (in
flight, buffered, the consumer's lag) are read when scraped. Labels are bounded: the service
class, route names and event types, never subjects. ``docs/observability.md`` lists them.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from amebus.consumer import HandlerTimeoutError
from amebus.deadletter import reply_meta
from amebus.events import EVENT_TYPE_HEADER
from amebus.telemetry import publishing
from amebus.telemetry.logs import outcome_of
from amebus.telemetry.observer import BaseObserver, Serving

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.consumer import Handler
    from amebus.telemetry.publishing import PublishDone
    from amebus.tracing import Decision, Failure

__all__ = ["HANDLER_BUCKETS", "OUTCOMES", "Metrics"]

OUTCOMES = ("acked", "naked", "termed", "returned", "skipped")
"""``amebus_messages_total`` outcomes: one per settlement."""

HANDLER_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300)
_ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 20, 50)
_NO_ROUTE = "(none)"


class _Families:
    """The metric families of one registry, shared by every ``Metrics`` using it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        route = ["service", "route"]
        self.messages = Counter("amebus_messages", "Settlements by route and outcome "
                                "(acked, naked, termed, returned, skipped).",
                                [*route, "outcome"], registry=registry)
        self.dead_lettered = Counter("amebus_dead_lettered", "Termed messages whose "
                                     "dead-letter copy was stored.", route, registry=registry)
        self.timed_out = Counter("amebus_handler_timeouts", "Handlers cancelled past their "
                                 "timeout.", route, registry=registry)
        self.failures = Counter("amebus_failures", "Failures traced, by stage.",
                                [*route, "stage"], registry=registry)
        self.handler_seconds = Histogram("amebus_handler_seconds", "Time a handler ran.",
                                         route, buckets=HANDLER_BUCKETS, registry=registry)
        self.attempts = Histogram("amebus_delivery_attempt", "The delivery number of each "
                                  "delivery started (1: first).", route,
                                  buckets=_ATTEMPT_BUCKETS, registry=registry)
        self.published = Counter("amebus_published", "Events published, by event type and "
                                 "outcome (stored, failed).", ["event_type", "outcome"],
                                 registry=registry)
        self.publish_seconds = Histogram("amebus_publish_seconds", "Time of a publish call "
                                         "until every ack arrived (kind: single, batch).",
                                         ["kind"], registry=registry)
        self.servings: list[Serving] = []
        registry.register(_Live(self))

    def publish_started(self, subjects: Sequence[str],
                        headers: Sequence[dict[str, str]]) -> PublishDone:
        start = time.perf_counter()
        kind = "single" if len(subjects) == 1 else "batch"

        def done(error: BaseException | None) -> None:
            self.publish_seconds.labels(kind).observe(time.perf_counter() - start)
            failed = getattr(error, "failures", None)  # BatchPublishError: per event
            for index, hdrs in enumerate(headers):
                bad = error is not None and (failed is None or index in failed)
                self.published.labels(hdrs.get(EVENT_TYPE_HEADER, ""),
                                      "failed" if bad else "stored").inc()

        return done


class _Live:
    """Read when scraped: in flight, buffered, received, and the consumer's lag."""

    def __init__(self, families: _Families) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        labels = ["service", "stream", "durable"]
        gauges = {name: GaugeMetricFamily(f"amebus_{name}", text, labels=labels) for name, text in (
            ("in_flight", "Handlers running now."),
            ("buffered", "Messages pulled and not yet started."),
            ("consumer_num_pending", "Messages in the stream not yet delivered to the consumer "
             "(polled)."),
            ("consumer_num_ack_pending", "Messages delivered and not yet settled (polled)."),
            ("consumer_num_redelivered", "Messages delivered more than once and not yet "
             "settled (polled)."),
            ("consumer_num_waiting", "Pull requests waiting on the server (polled)."))}
        received = CounterMetricFamily("amebus_received", "Messages pulled from the server.",
                                       labels=labels)
        for serving in self.families.servings:
            key = [serving.name, serving.stream, serving.durable]
            gauges["in_flight"].add_metric(key, serving.consumer.in_flight)
            gauges["buffered"].add_metric(key, len(serving.puller.buffer))
            lag = serving.lag
            if lag.updated_at:
                gauges["consumer_num_pending"].add_metric(key, lag.num_pending)
                gauges["consumer_num_ack_pending"].add_metric(key, lag.num_ack_pending)
                gauges["consumer_num_redelivered"].add_metric(key, lag.num_redelivered)
                gauges["consumer_num_waiting"].add_metric(key, lag.num_waiting)
            received.add_metric(key, serving.puller.received)
        yield from gauges.values()
        yield received


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, _Families] = (
    weakref.WeakKeyDictionary())


class _Route:
    __slots__ = ("attempts", "dead_lettered", "failures", "labels", "outcomes", "seconds",
                 "timed_out")

    def __init__(self, families: _Families, service: str, route: str) -> None:
        self.labels = (service, route)
        self.outcomes = {o: families.messages.labels(service, route, o) for o in OUTCOMES}
        self.dead_lettered = families.dead_lettered.labels(service, route)
        self.timed_out = families.timed_out.labels(service, route)
        self.failures = families.failures
        self.seconds = families.handler_seconds.labels(service, route)
        self.attempts = families.attempts.labels(service, route)


class Metrics(BaseObserver):
    """Prometheus metrics of one serving service.

    Args:
        registry: where the metrics are registered; default: a registry of this object's own
            (:attr:`registry`), not prometheus_client's global one. Several ``Metrics`` (one
            per service) may share a registry: their series differ by the ``service`` label.
        lag_interval: seconds between ``CONSUMER.INFO`` polls for the lag gauges.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 lag_interval: float = 5.0) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        families = _BY_REGISTRY.get(self.registry)
        if families is None:
            families = _BY_REGISTRY[self.registry] = _Families(self.registry)
        self._families = families
        self.lag_interval = lag_interval
        self._serving: Serving | None = None
        self._routes: dict[int, _Route] = {}
        self._by_name: dict[str, _Route] = {}
        self._none: _Route | None = None

    async def start(self, serving: Serving) -> None:
        """Bind the service's routes and start polling its lag."""
        if self._serving is not None:
            msg = (f"this Metrics already observes {self._serving.name}; give each serving "
                   f"service its own Metrics (they may share a registry)")
            raise RuntimeError(msg)
        self._serving = serving
        families = self._families
        for handler in serving.consumer.handlers.values():
            route = _Route(families, serving.name, handler.name)
            self._routes[id(handler)] = self._by_name[handler.name] = route
        self._none = _Route(families, serving.name, _NO_ROUTE)
        families.servings.append(serving)
        if len(families.servings) == 1:
            publishing.add_publish_observer(families)
        serving.lag.interval = self.lag_interval
        serving.lag.start()

    async def stop(self) -> None:
        """Stop reading the service's gauges (its counters stay)."""
        serving, self._serving = self._serving, None
        families = self._families
        if serving is not None and serving in families.servings:
            families.servings.remove(serving)
            if not families.servings:
                publishing.remove_publish_observer(families)

    def _route(self, handler: Handler | None) -> _Route:
        route = self._routes.get(id(handler)) if handler is not None else None
        if route is None:
            route = self._none
            assert route is not None  # set in start(), before any message
        return route

    def delivery_started(self, msg: Msg, handler: Handler) -> None:
        """Observe the delivery number."""
        self._route(handler).attempts.observe(reply_meta(msg.reply)[2])

    def handler_finished(self, msg: Msg, handler: Handler, seconds: float) -> None:
        """Observe the handler's time."""
        self._route(handler).seconds.observe(seconds)

    def failed(self, failure: Failure) -> None:
        """Count the failure by stage, and timeouts."""
        route = self._by_name.get(failure.route or "") or self._route(None)
        route.failures.labels(*route.labels, failure.stage).inc()
        if isinstance(failure.error, HandlerTimeoutError):
            route.timed_out.inc()

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """Count the settlement by outcome (and a dead-letter copy)."""
        route = self._route(handler)
        serving = self._serving
        stopping = serving is not None and serving.consumer.stopping
        route.outcomes[outcome_of(decision, handler, returned=stopping)].inc()
        if decision.action == "term" and decision.dead_letter:
            route.dead_lettered.inc()
