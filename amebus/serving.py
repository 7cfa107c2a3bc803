"""``serve()`` wiring: the typed options, the serving state, binding -> pull -> consumer.

:func:`serve` binds the durable pull consumer (:mod:`amebus.binding`), starts the pull engine
(:class:`~amebus.pull.Puller`) and runs :class:`~amebus.consumer.JetStreamConsumer` on it,
with the catch-up of added routes and the gave-up watch in the background. Each ``Service``
instance has one :class:`ServingState`, whose :class:`Lifecycle` says whether it serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import attrs

from amebus._checks import check_options
from amebus.errors import ConfigurationError
from amebus.ordering import Key
from amebus.priority import PRIORITY_OPTIONS, Overflow, check_priority
from amebus.provision import check_options as check_provision
from amebus.settlement import RouteStats, Settings
from amebus.telemetry.observer import check_observer

if TYPE_CHECKING:
    from nats.aio.client import Client

    from amebus.consumer import JetStreamConsumer
    from amebus.pull import Puller
    from amebus.service import Service
    from amebus.telemetry.observer import Observer
    from amebus.tracing import ErrorTracer

__all__ = ["SERVE_OPTIONS", "Lifecycle", "ServeOptions", "ServiceStats", "ServingState", "Ticker",
           "catch_up_left", "effective", "positive_int", "settings_of", "stop_tasks",
           "warn_slow_pings"]

log = logging.getLogger(__name__)

SETTINGS = tuple(f.name for f in attrs.fields(Settings))
SERVE_OPTIONS = ("stream", "durable", "stream_subjects", "max_ack_pending", "batch",
                 "max_bytes_in_flight", "server_filter", "new_routes", "deliver_policy",
                 "provision", *SETTINGS, "dead_letter_stream", "key", *PRIORITY_OPTIONS)
"""The configuration names ``serve()`` takes (besides ``error_tracer`` and ``observer``)."""


class ServeOptions(TypedDict, total=False):
    """The keyword arguments of ``Service.serve()`` (each overrides the class attribute of the
    same name; see :class:`~amebus.service.Service`)."""

    stream: str
    durable: str
    stream_subjects: tuple[str, ...] | list[str]
    max_ack_pending: int
    batch: int
    max_bytes_in_flight: int
    server_filter: str
    new_routes: str
    deliver_policy: str | int | datetime.datetime
    provision: str
    concurrency: int
    ack_wait: float
    max_deliver: int
    backoff: tuple[float, ...] | list[float]
    timeout: float | None
    dead_letter_subject: str | None
    shutdown_timeout: float
    server_max_deliver: int | None
    dead_letter_stream: str | None
    key: Key | None
    standby: bool
    priority_timeout: float
    overflow: Overflow | None
    error_tracer: ErrorTracer | None
    observer: Observer | None


@attrs.define
class ServiceStats:
    """Live counters of a serving service (read them while it runs).

    Attributes:
        routes: per-route counters by route name.
        received: messages pulled from the server.
        skipped: messages of an unfiltered consumer that no route handles (acked unhandled).
        in_flight: handlers running now.
        buffered: messages pulled and not yet started.
        bytes_in_flight: bytes pulled and not yet settled (bounded by ``max_bytes_in_flight``).
        disconnects: connections lost and replaced while serving (any cause).
        dead_connections: connections amebus found dead (no heartbeat, no PONG) and replaced.
        connected: the connection is live now (False while it is lost or being replaced: a
            readiness check can use it).
        standby: the service serves as active/standby (``standby = True``).
        pinned: ``standby``: this instance holds the pin now (the one consuming).
    """

    routes: dict[str, RouteStats] = attrs.Factory(dict)
    received: int = 0
    skipped: int = 0
    in_flight: int = 0
    buffered: int = 0
    bytes_in_flight: int = 0
    disconnects: int = 0
    dead_connections: int = 0
    connected: bool = False
    standby: bool = False
    pinned: bool = False

    def total(self) -> RouteStats:
        """The sum of every route's counters."""
        total = RouteStats()
        for stats in self.routes.values():
            for field in attrs.fields(RouteStats):
                setattr(total, field.name,
                        getattr(total, field.name) + getattr(stats, field.name))
        return total


class Lifecycle(enum.Enum):
    """Where one service instance is: ``IDLE`` (not serving; again after serving stopped),
    ``BINDING`` (serve() started, the consumer is being bound), ``SERVING`` (pulling)."""

    IDLE = "idle"
    BINDING = "binding"
    SERVING = "serving"


@attrs.define
class ServingState:
    """The serving state of one service instance (``stats`` is kept after serving stops)."""

    lifecycle: Lifecycle = Lifecycle.IDLE
    stats: ServiceStats | None = None
    engine: tuple[JetStreamConsumer, Puller] | None = None
    """The running consumer and pull engine (while ``SERVING``)."""

    def read_engine(self) -> None:
        """Copy the running engine's counters into ``stats``."""
        if self.engine is None or self.stats is None:
            return
        consumer, puller = self.engine
        stats = self.stats
        stats.received, stats.skipped = puller.received, consumer.skipped
        stats.in_flight, stats.buffered = consumer.in_flight, puller.waiting
        stats.bytes_in_flight = puller.unsettled
        stats.disconnects = puller.health.disconnects
        stats.dead_connections = puller.health.dead_connections
        stats.connected = consumer.nc.is_connected and not puller.health.replacing
        priority = puller.priority
        stats.standby = priority is not None and priority.timeout is not None  # pinned client
        stats.pinned = priority is not None and priority.pin_id is not None


def settings_of(cls: type[Service], overrides: Mapping[str, Any]) -> Settings:
    """The :class:`Settings` of ``cls`` with ``overrides``, every option checked.

    Raises:
        TypeError: an unknown option.
        ConfigurationError: an invalid value.
    """
    unknown = set(overrides) - set(SERVE_OPTIONS) - {"error_tracer", "observer"}
    if unknown:
        msg = (f"{cls.__name__}.serve() got unknown option(s) {sorted(unknown)}; "
               f"valid: {', '.join(SERVE_OPTIONS)}, error_tracer, observer")
        raise TypeError(msg)
    new_routes = overrides.get("new_routes", getattr(cls, "new_routes", "replay"))
    if new_routes not in ("replay", "skip"):
        msg = f"{cls.__name__}.new_routes is {new_routes!r}; use 'replay' or 'skip'"
        raise ConfigurationError(msg)
    check_observer(cls.__name__, overrides.get("observer", cls.observer))
    check_provision(cls.__name__, {name: overrides.get(name, getattr(cls, name))
                                    for name in ("deliver_policy", "provision")})
    check_priority(cls.__name__, {name: overrides.get(name, getattr(cls, name))
                                  for name in PRIORITY_OPTIONS})
    values = {name: overrides.get(name, getattr(cls, name)) for name in SETTINGS}
    try:
        check_options({name: overrides.get(name, getattr(cls, name))
                       for name in (*SERVE_OPTIONS, "error_tracer", "converter")
                       if name not in values})
        return Settings(**values)
    except (TypeError, ValueError) as exc:
        msg = f"{cls.__name__}: invalid configuration: {exc}"
        raise ConfigurationError(msg) from None


def effective(cls: type[Service], settings: Settings, config: Any) -> Settings:
    """``settings`` with the ``ack_wait`` the server actually applies to the durable."""
    ack_wait = float(config.ack_wait or settings.ack_wait)
    if abs(ack_wait - settings.ack_wait) > 1e-3:
        log.warning("%s: the consumer's ack_wait is %gs on the server, not %gs; in-progress "
                    "signals follow the server's", cls.__name__, ack_wait, settings.ack_wait)
        settings = attrs.evolve(settings, ack_wait=ack_wait)
    return settings


def positive_int(cls: type[Service], name: str, value: Any) -> int:
    """``value`` if it is a positive whole number of bytes (``cls.name`` names it if not)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = (f"{cls.__name__}.{name} = {value!r}: give a positive whole number of bytes "
               f"(for example 16 * 1024 * 1024)")
        raise ConfigurationError(msg)
    return value


async def catch_up_left(nc: Client, stream: str, durable: str) -> bool:
    """True if a replay of added routes was interrupted (its catch-up durable exists)."""
    from nats.js.errors import NotFoundError

    from amebus.catchup import catch_up_durable

    try:
        await nc.jetstream().consumer_info(stream, catch_up_durable(durable))
    except NotFoundError:
        return False
    return True


def warn_slow_pings(nc: Client) -> None:
    """One WARNING per connection that would take minutes to notice it is dead by itself."""
    from amebus import _natsio

    seconds = _natsio.detection_seconds(nc)
    if seconds is None or seconds <= 60 or getattr(nc, "_amebus_warned", False):
        return
    with contextlib.suppress(Exception):
        nc._amebus_warned = True  # type: ignore[attr-defined]
    log.warning("this NATS connection notices a dead server only after %.0fs by itself "
                "(ping_interval x (max_outstanding_pings + 1)); amebus checks the connections "
                "it pulls on, but publishing and acking on a dead one fail silently until then: "
                "connect with ping_interval=10, max_outstanding_pings=2 (docs/deployment.md)",
                seconds)


class Ticker:
    """Per watchdog tick: bound the pull engine by throughput, keep buffered messages alive."""

    def __init__(self, puller: Puller, settings: Settings) -> None:
        self.puller, self.settings = puller, settings
        self.handled = 0
        self.progress_at = time.monotonic()

    async def tick(self, consumer: JetStreamConsumer, elapsed: float) -> None:
        """Set the pull limit to what ``ack_wait / 4`` can start; send in-progress signals
        for buffered and parked messages every ``ack_wait / 3``."""
        puller, settings = self.puller, self.settings
        done = consumer.handled - self.handled
        self.handled = consumer.handled
        if puller.buffer and elapsed > 0:  # busy, not starved: hold what ack_wait/4 can start
            fits = int(done / elapsed * settings.ack_wait / 4)
            puller.limit = max(2 * settings.concurrency, min(puller.batch, fits))
        else:
            puller.limit = puller.batch
        now = time.monotonic()
        if puller.waiting and now - self.progress_at >= settings.ack_wait / 3:
            self.progress_at = now
            for msg in [*puller.buffer, *puller.parked.values()]:
                await consumer.progress(msg)
        elif not puller.waiting:
            self.progress_at = now


async def stop_tasks(tasks: list[asyncio.Task[Any]]) -> None:
    """Cancel ``tasks`` and wait for them, whatever they raise."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

