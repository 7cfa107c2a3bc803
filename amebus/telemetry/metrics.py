"""Prometheus metrics of a serving service (``pip install 'amebus[prometheus]'``).

Per delivery only plain integers are bumped (a few attribute increments, no lock); the
metric families are built from them when scraped, with the gauges (in flight, buffered, the
consumer's polled lag). Labels are bounded: the service class, route names and event types,
never subjects. ``docs/observability.md`` lists every series.
"""

from __future__ import annotations

import time
import weakref
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from amebus.errors import HandlerTimeoutError
from amebus.events import EVENT_TYPE_HEADER
from amebus.settlement import deliveries_of
from amebus.telemetry import publishing
from amebus.telemetry.observer import BaseObserver, Serving

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.handlers import Handler
    from amebus.telemetry.publishing import PublishDone
    from amebus.tracing import Decision, Failure

__all__ = ["ATTEMPT_BUCKETS", "HANDLER_BUCKETS", "OUTCOMES", "PUBLISH_BUCKETS", "Metrics"]

OUTCOMES = ("acked", "naked", "termed", "returned", "skipped")
"""``amebus_messages_total`` outcomes: exactly one per settlement."""

HANDLER_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300)
ATTEMPT_BUCKETS = (1, 2, 3, 4, 5, 7, 10, 20, 50)
PUBLISH_BUCKETS = (.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5)
_NO_ROUTE = "(none)"


class _Histogram:
    __slots__ = ("bounds", "counts", "les", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.les: list[str] = [floatToGoString(b)  # type: ignore[no-untyped-call]
                               for b in (*bounds, float("inf"))]
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def add_to(self, family: HistogramMetricFamily, labels: list[str]) -> None:
        running, buckets = 0, []
        for le, count in zip(self.les, self.counts, strict=True):
            running += count
            buckets.append((le, running))
        family.add_metric(labels, buckets, self.total)


class _Route:
    """The counts of one route (or of messages no route handled)."""

    __slots__ = ("acked", "attempts", "dead_lettered", "failures", "naked", "returned",
                 "seconds", "skipped", "termed", "timed_out")

    def __init__(self) -> None:
        self.acked = self.naked = self.termed = self.returned = self.skipped = 0
        self.dead_lettered = self.timed_out = 0
        self.failures: dict[str, int] = {}
        self.seconds = _Histogram(HANDLER_BUCKETS)
        self.attempts = _Histogram(ATTEMPT_BUCKETS)


class _Collector:
    """One per registry: every ``Metrics`` using it, and the publish counts of the process."""

    def __init__(self) -> None:
        self.members: list[Metrics] = []
        self.published: dict[tuple[str, str], int] = {}
        self.publish_seconds = {"single": _Histogram(PUBLISH_BUCKETS),
                                "batch": _Histogram(PUBLISH_BUCKETS)}
        self.live = 0
        self.pinned = False  # instrument_publishing(): count publishes with nothing serving

    def publish_started(self, subjects: Sequence[str],
                        headers: Sequence[dict[str, str]]) -> PublishDone:
        start = time.perf_counter()

        def done(error: BaseException | None) -> None:
            kind = "single" if len(subjects) == 1 else "batch"
            self.publish_seconds[kind].observe(time.perf_counter() - start)
            failed = getattr(error, "failures", None)  # BatchPublishError: per event
            for index, hdrs in enumerate(headers):
                bad = error is not None and (failed is None or index in failed)
                key = (hdrs.get(EVENT_TYPE_HEADER, ""), "failed" if bad else "stored")
                self.published[key] = self.published.get(key, 0) + 1

        return done

    def collect(self) -> Iterator[Metric]:
        route_labels = ["service", "route"]
        messages = CounterMetricFamily(
            "amebus_messages", "Settlements by route and outcome (acked, naked, termed, "
            "returned: given back at shutdown, skipped: no route, acked unhandled).",
            labels=[*route_labels, "outcome"])
        dead = CounterMetricFamily("amebus_dead_lettered", "Termed messages whose "
                                   "dead-letter copy was stored.", labels=route_labels)
        timeouts = CounterMetricFamily("amebus_handler_timeouts", "Handlers cancelled past "
                                       "their timeout.", labels=route_labels)
        failures = CounterMetricFamily("amebus_failures", "Failures traced, by stage.",
                                       labels=[*route_labels, "stage"])
        seconds = HistogramMetricFamily("amebus_handler_seconds", "Time a handler ran.",
                                        labels=route_labels)
        attempts = HistogramMetricFamily("amebus_delivery_attempt", "The delivery number of "
                                         "each delivery started (1: the first).",
                                         labels=route_labels)
        for member in self.members:
            for name, route in member.routes.items():
                key = [member.service, name]
                for outcome in OUTCOMES:
                    messages.add_metric([*key, outcome], getattr(route, outcome))
                dead.add_metric(key, route.dead_lettered)
                timeouts.add_metric(key, route.timed_out)
                for stage, count in route.failures.items():
                    failures.add_metric([*key, stage], count)
                route.seconds.add_to(seconds, key)
                route.attempts.add_to(attempts, key)
        yield from (messages, dead, timeouts, failures, seconds, attempts)
        yield from self._live()
        published = CounterMetricFamily("amebus_published", "Events published, by event "
                                        "type and outcome (stored, failed).",
                                        labels=["event_type", "outcome"])
        for (event_type, outcome), count in sorted(self.published.items()):
            published.add_metric([event_type, outcome], count)
        latency = HistogramMetricFamily("amebus_publish_seconds", "Time of a publish call "
                                        "until every ack arrived.", labels=["kind"])
        for kind, histogram in self.publish_seconds.items():
            histogram.add_to(latency, [kind])
        yield from (published, latency)

    def _live(self) -> Iterator[Metric]:
        labels = ["service", "stream", "durable"]
        gauges = {name: GaugeMetricFamily(f"amebus_{name}", text, labels=labels)
                  for name, text in (
            ("in_flight", "Handlers running now."),
            ("buffered", "Messages pulled and not yet started."),
            ("consumer_num_pending", "Stream messages not yet delivered to the consumer "
             "(polled)."),
            ("consumer_num_ack_pending", "Messages delivered and not yet settled (polled)."),
            ("consumer_num_redelivered", "Messages delivered more than once and not yet "
             "settled (polled)."),
            ("consumer_num_waiting", "Pull requests waiting on the server (polled)."))}
        received = CounterMetricFamily("amebus_received", "Messages pulled from the server.",
                                       labels=labels)
        for member in self.members:
            serving = member.serving
            if serving is None:
                continue
            key = [serving.name, serving.stream, serving.durable]
            gauges["in_flight"].add_metric(key, serving.consumer.in_flight)
            gauges["buffered"].add_metric(key, serving.puller.waiting)
            lag = serving.lag
            if lag.updated_at:
                gauges["consumer_num_pending"].add_metric(key, lag.num_pending)
                gauges["consumer_num_ack_pending"].add_metric(key, lag.num_ack_pending)
                gauges["consumer_num_redelivered"].add_metric(key, lag.num_redelivered)
                gauges["consumer_num_waiting"].add_metric(key, lag.num_waiting)
            received.add_metric(key, serving.puller.received)
        yield from gauges.values()
        yield received


_COLLECTORS: weakref.WeakKeyDictionary[CollectorRegistry, _Collector] = (
    weakref.WeakKeyDictionary())


class Metrics(BaseObserver):
    """Prometheus metrics of one serving service.

    Args:
        registry: where the metrics are registered; default: a registry of this object's own
            (:attr:`registry`), never prometheus_client's global one. Several ``Metrics`` (one
            per service) may share a registry: their series differ by the ``service`` label.
        lag_interval: seconds between ``CONSUMER.INFO`` polls for the lag gauges.
    """

    def __init__(self, registry: CollectorRegistry | None = None, *,
                 lag_interval: float = 5.0) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        collector = _COLLECTORS.get(self.registry)
        if collector is None:
            collector = _COLLECTORS[self.registry] = _Collector()
            self.registry.register(collector)
        self._collector = collector
        self.lag_interval = lag_interval
        self.serving: Serving | None = None
        self.service = ""
        self.routes: dict[str, _Route] = {}
        self._by_handler: dict[int, _Route] = {}
        self._none = _Route()
        self._first = ""  # the reply prefix of a first delivery (JetStreamConsumer.first_reply)

    def instrument_publishing(self) -> None:
        """Count every publish of this process from now on, serving or not (publishes are
        counted while a service with this registry's metrics serves anyway)."""
        self._collector.pinned = True
        publishing.add_publish_observer(self._collector)

    def uninstrument_publishing(self) -> None:
        """Undo :meth:`instrument_publishing` (publishes are still counted while serving)."""
        self._collector.pinned = False
        if self._collector.live == 0:
            publishing.remove_publish_observer(self._collector)

    async def start(self, serving: Serving) -> None:
        """Bind the service's routes and start polling its lag."""
        if self.serving is not None:
            msg = (f"this Metrics already observes {self.serving.name}; give each serving "
                   f"service its own Metrics (they may share a registry)")
            raise RuntimeError(msg)
        self.serving, self.service = serving, serving.name
        self._first = getattr(serving.consumer, "first_reply", "")
        for handler in serving.consumer.handlers.values():
            route = self.routes.setdefault(handler.name, _Route())
            self._by_handler[id(handler)] = route
        self.routes.setdefault(_NO_ROUTE, self._none)
        collector = self._collector
        if self not in collector.members:
            collector.members.append(self)
        collector.live += 1
        if collector.live == 1:
            publishing.add_publish_observer(collector)
        serving.lag.interval = self.lag_interval
        serving.lag.start()

    async def stop(self) -> None:
        """Stop reading the service's gauges; its counters stay in the registry."""
        if self.serving is None:
            return
        self.serving = None
        self._by_handler.clear()
        collector = self._collector
        collector.live -= 1
        if collector.live == 0 and not collector.pinned:
            publishing.remove_publish_observer(collector)

    def delivery_started(self, msg: Msg, handler: Handler) -> None:
        """Count the delivery by its number (from the reply subject)."""
        reply, first = msg.reply, self._first
        deliveries = 1 if first and reply.startswith(first) else deliveries_of(reply)
        self._by_handler.get(id(handler), self._none).attempts.observe(deliveries)

    def handler_finished(self, msg: Msg, handler: Handler, seconds: float) -> None:
        """Count the handler's time."""
        self._by_handler.get(id(handler), self._none).seconds.observe(seconds)

    def failed(self, failure: Failure) -> None:
        """Count the failure by stage, and timeouts."""
        route = self.routes.get(failure.route or _NO_ROUTE, self._none)
        route.failures[failure.stage] = route.failures.get(failure.stage, 0) + 1
        if isinstance(failure.error, HandlerTimeoutError):
            route.timed_out += 1

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """Count the settlement by outcome (and a dead-letter copy)."""
        action = decision.action
        if handler is None:
            route = self._none
            if action == "ack":
                route.skipped += 1
                return
        else:
            route = self._by_handler.get(id(handler), self._none)
            if action == "ack":
                route.acked += 1
                return
        if action == "nak":
            serving = self.serving
            if decision.delay == 0 and serving is not None and serving.consumer.stopping:
                route.returned += 1
            else:
                route.naked += 1
        else:
            route.termed += 1
            if decision.dead_letter:
                route.dead_lettered += 1
