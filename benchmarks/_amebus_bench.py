"""The amebus row: a Service with the four routes, served until the stream is consumed."""

# No ``from __future__ import annotations`` here on purpose: the event and service classes are
# built inside a function (each run needs a fresh durable), so handler annotations must be real
# objects; as strings amebus could not resolve a class local to a function.

import asyncio
import contextlib
import time
from collections.abc import Mapping
from typing import Any

import attrs
import nats

import amebus
from amebus.telemetry import Metrics, Observers, Tracing
from amebus.telemetry.observer import Observer
from benchmarks._baselines import Target, Unavailable, Workload

__all__ = ["amebus_serve", "build_service", "observer_for", "seconds_to_ack"]


def build_service(work: Workload, target: Target, *,
                  route_options: Mapping[str, Any] | None = None,
                  attributes: Mapping[str, Any] | None = None) -> Any:
    """An amebus Service on ``target.stream``/``target.durable`` whose handlers count routes.

    ``route_options`` are given to each of the four ``Route``s, ``attributes`` set on a
    subclass of the service (the feature rows of ``benchmarks.features``).
    """
    options: Mapping[str, Any] = route_options or {}

    @attrs.frozen
    class Order(amebus.Event):
        subject_pattern = "orders.>"

        order_id: str
        customer: str
        amount_cents: int
        currency: str
        lines: int

    def counted(route: str) -> None:
        work.count(route)
        work.settled(acked=True)  # amebus acks right after the handler returns

    class Orders(amebus.Service):
        stream = target.stream
        durable = target.durable

        @amebus.Route("orders.created.*", **options)
        async def created(self, order: Order) -> None:
            counted("created")

        @amebus.Route("orders.paid.*", **options)
        async def paid(self, order: Order) -> None:
            counted("paid")

        @amebus.Route("orders.cancelled.*", **options)
        async def cancelled(self, order: Order) -> None:
            counted("cancelled")

        @amebus.Route("orders.invoice", **options)
        async def invoice(self, order: Order) -> None:
            counted("invoice")

    if attributes:
        return type("Orders", (Orders,), {"__module__": __name__, **attributes})()
    return Orders()


def observer_for(telemetry: str) -> Any:
    """The observer of a telemetry row: ``metrics`` (Prometheus, own registry), ``tracing``
    (the OpenTelemetry SDK, a batch span processor and an exporter that drops every span),
    ``tracing_sampled`` (the same, sampling 1% of traces), ``both``, or none for ``""``."""
    if not telemetry:
        return None
    observers: list[Observer] = []
    if telemetry in ("metrics", "both"):
        try:
            observers.append(Metrics())
        except ImportError as error:
            raise Unavailable(f"prometheus-client not installed ({error})") from error
    if telemetry in ("tracing", "tracing_sampled", "both"):
        try:
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import (
                BatchSpanProcessor,
                SpanExporter,
                SpanExportResult,
            )
        except ImportError as error:
            raise Unavailable(f"opentelemetry-sdk not installed ({error})") from error

        class Dropped(SpanExporter):
            def export(self, spans: Any) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        sampler = ParentBased(TraceIdRatioBased(0.01)) if telemetry == "tracing_sampled" else None
        provider = TracerProvider(sampler=sampler)
        provider.add_span_processor(BatchSpanProcessor(Dropped()))
        observers.append(Tracing(provider))
    return Observers(*observers)


async def amebus_serve(work: Workload, target: Target, concurrency: int = 1,
                       telemetry: str = "", *, route_options: Mapping[str, Any] | None = None,
                       attributes: Mapping[str, Any] | None = None) -> None:
    """Serve the bench Service until every message is handled, then cancel it."""
    service = build_service(work, target, route_options=route_options, attributes=attributes)
    observer = observer_for(telemetry)
    nc = await nats.connect(target.url, name="amebus-bench", allow_reconnect=False)
    ready = asyncio.Event()
    serving = asyncio.create_task(service.serve(nc.jetstream(), ready=ready,
                                                concurrency=concurrency, observer=observer))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
    if serving.done():  # serve() returned or failed before it was ready
        waiting.cancel()
        serving.result()
        msg = "amebus Service.serve() returned before setting ready"
        raise RuntimeError(msg)
    target.ready()
    await work.done.wait()
    serving.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await serving
    await nc.flush()
    await nc.close()


async def seconds_to_ack(js: Any, service: amebus.Service, *, stream: str, durable: str,
                         n: int, concurrency: int) -> float:
    """Serve ``service`` until ``durable``'s ack floor reaches stream sequence ``n``: the
    seconds from ready to then (serving is stopped before returning)."""
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve(js, stream=stream, durable=durable, ready=ready,
                                             max_ack_pending=1000, concurrency=concurrency))
    await ready.wait()
    start = time.perf_counter()
    while True:
        info = await js.consumer_info(stream, durable)
        if info.ack_floor is not None and info.ack_floor.stream_seq >= n:
            break
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return elapsed
