"""``Service``: declare routes and configuration on a class, then ``await Service().serve(js)``.

``serve`` binds the durable pull consumer (creating the stream and consumer where asked),
pulls through :class:`~amebus.pull.Puller` and settles through
:class:`~amebus.consumer.JetStreamConsumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from amebus import once
from amebus._checks import check_options
from amebus._violations import explained, note_shared_inbox, watch_violations
from amebus.codec import Codec, default_codec
from amebus.consumer import Handler, JetStreamConsumer, RouteStats, Settings
from amebus.deadletter import check_dead_letter_stream
from amebus.errors import ConfigurationError, DecodeError, NoRouteError
from amebus.events import EVENT_TYPE_HEADER
from amebus.matcher import Matcher
from amebus.permissions import permissions
from amebus.provision import check_options as check_provision
from amebus.pull import Puller
from amebus.routing import CompiledRoute, ServiceMeta
from amebus.telemetry.observer import ConsumerLag, Observers, Serving, check_observer
from amebus.tracing import ErrorTracer

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.telemetry.observer import Observer

__all__ = ["Service", "ServiceStats"]

log = logging.getLogger(__name__)

_SETTINGS = tuple(f.name for f in attrs.fields(Settings))
_SERVE_OPTIONS = ("stream", "durable", "stream_subjects", "max_ack_pending", "batch",
                  "max_bytes_in_flight", "server_filter", "new_routes", "deliver_policy",
                  "provision", *_SETTINGS, "dead_letter_stream")


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

    def total(self) -> RouteStats:
        """The sum of every route's counters."""
        total = RouteStats()
        for stats in self.routes.values():
            for field in attrs.fields(RouteStats):
                setattr(total, field.name,
                        getattr(total, field.name) + getattr(stats, field.name))
        return total


class _Bound:
    """A compiled route bound to a service instance.

    ``run(msg)`` decodes the message as the handler asked and returns the handler's awaitable:
    for an async handler its own coroutine, with no wrapper on the per-message path.
    """

    __slots__ = ("name", "route", "run", "stats", "timeout")

    def __init__(self, route: CompiledRoute, service: Service, codec: Codec) -> None:
        self.route = route
        self.name = route.name
        self.stats = RouteStats()
        self.timeout = route.timeout  # None: the service's timeout
        handler = route.handler
        if route.is_method:
            target = service
            if route.owner is not None and not isinstance(service, route.owner):
                target = _mounted(service, route.owner)
            call = handler.__get__(target, type(target))
        elif not inspect.isroutine(handler) and callable(getattr(handler, "process", None)):
            call = handler.process
        else:
            call = handler
        is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
            type(call).__call__)
        arg = _argument(route, codec)
        run: Callable[[Msg], Any]
        if route.with_message:
            run = lambda msg: call(arg(msg), msg)  # noqa: E731
        elif arg is _as_message:
            run = call
        else:
            run = lambda msg: call(arg(msg))  # noqa: E731
        self.run: Callable[[Msg], Awaitable[Any]] = run if is_async else _awaitable(run)
        self.run = once.wrap(self.run, route, arg)  # idempotent=, ack_sync= (amebus.once)


def _argument(route: CompiledRoute, codec: Codec) -> Callable[[Msg], Any]:
    """What the handler's first parameter receives, as a function of the message."""
    if route.event is not None:
        decode = codec.decoder(route.event)
        return lambda msg: decode(msg.data)
    if route.events:
        return _by_header({e.event_type: codec.decoder(e) for e in route.events})
    if route.takes == "payload":
        return lambda msg: msg.data
    return _as_message


def _as_message(msg: Msg) -> Msg:
    return msg


def _awaitable(run: Callable[[Msg], Any]) -> Callable[[Msg], Awaitable[Any]]:
    """Wrap a sync handler (run on the event loop); an awaitable it returns is awaited."""

    async def sync(msg: Msg) -> Any:
        result = run(msg)
        return await result if inspect.isawaitable(result) else result

    return sync


class Service(metaclass=ServiceMeta):
    """Base class of a routed JetStream service.

    Declare ``Route`` and ``Router`` attributes and configuration as class attributes; every
    configuration name can be overridden per call as a keyword of ``serve()``.

    Attributes:
        stream: the stream to consume (required).
        durable: the durable pull consumer's name (default: the class name).
        stream_subjects: if set, the stream is created with these subjects when missing, or
            updated to include them.
        ack_wait: seconds the server waits for a settlement before redelivering (30).
        max_deliver: handler attempts before a failing message is termed and dead-lettered
            (5; 0 or -1: unlimited). amebus counts attempts itself: a delivery given back
            unstarted or lost with a crashed process before its handler ran costs nothing.
        server_max_deliver: the server's own delivery limit, a backstop above
            ``max_deliver`` (None: ``max(10 * max_deliver, 50)``; -1: unlimited).
        backoff: nak delays in seconds, by attempt number ((1, 5, 30, 120)).
        max_ack_pending: unsettled messages the server allows in flight (1000).
        concurrency: handlers run at once (1).
        timeout: seconds a handler may run before it is cancelled and retried (300; None:
            no limit). ``Route(..., timeout=)`` overrides it per route.
        dead_letter_subject: where a copy of each termed failing message is published; serve
            checks that a stream captures it and that the copies do not loop back into a route.
        dead_letter_stream: if set, the stream created (or extended) with
            ``dead_letter_subject`` when no stream captures it.
        shutdown_timeout: seconds running handlers get to finish when serving stops (10).
        batch: the most messages held by the pull engine (512).
        max_bytes_in_flight: the most bytes pulled and not yet settled (16 MiB): a quarter of
            nats-server's per-client ``max_pending`` (64 MB), past which the server cuts the
            connection as a slow consumer; peak memory grows with it. A message larger than
            half of it is pulled alone (docs/configuration.md).
        server_filter: ``"routes"``: the consumer filters on ``filter_subjects``, so unrouted
            subjects never arrive; ``"stream"``: the consumer takes the whole stream and
            unrouted messages are acked unhandled (counted in ``stats.skipped``); ``"auto"``
            (default): ``routes`` where that is free (the routes cover the stream's subjects)
            or required (work-queue streams), else ``stream``, because nats-server slows
            filtered consumers with the number of distinct subjects (docs/configuration.md).
        new_routes: when a redeploy adds routes, ``"replay"`` (default) handles the messages
            already stored on their subjects (up to where the durable had got), ``"skip"``
            skips them; the count is logged either way (docs/configuration.md).
        converter: a cattrs converter for this service's events (default: amebus's own).
        error_tracer: receives every failure (default: ``LoggingTracer``).
        observer: telemetry told about serving and every delivery (default None: nothing is
            called); see :mod:`amebus.telemetry` (metrics, health, discovery, traces).
        deliver_policy: where a NEW durable starts: ``"all"`` (default: the whole stream),
            ``"new"`` (only messages stored from now on), ``"last"``, ``"last_per_subject"``,
            a start sequence (int) or a start time (aware datetime). An existing durable
            keeps its position (``amebus reset`` moves it).
        provision: what serving may change on the server: ``"update"`` (default: create what
            is missing, update what amebus created), ``"adopt"`` (also rewrite a consumer
            made by others), ``"verify"`` (change nothing, refuse any difference) or
            ``"bind"`` (change nothing, serve as the server has it). See docs/operations.md.
    """

    stream: ClassVar[str | None] = None
    durable: ClassVar[str | None] = None
    stream_subjects: ClassVar[tuple[str, ...] | None] = None
    ack_wait: ClassVar[float] = 30.0
    max_deliver: ClassVar[int] = 5
    backoff: ClassVar[tuple[float, ...]] = (1.0, 5.0, 30.0, 120.0)
    max_ack_pending: ClassVar[int] = 1000
    concurrency: ClassVar[int] = 1
    timeout: ClassVar[float | None] = 300.0
    dead_letter_subject: ClassVar[str | None] = None
    dead_letter_stream: ClassVar[str | None] = None
    shutdown_timeout: ClassVar[float] = 10.0
    server_max_deliver: ClassVar[int | None] = None
    batch: ClassVar[int] = 512
    max_bytes_in_flight: ClassVar[int] = 16 * 1024 * 1024
    server_filter: ClassVar[str] = "auto"
    new_routes: ClassVar[str] = "replay"
    converter: ClassVar[Any] = None
    error_tracer: ClassVar[ErrorTracer | None] = None
    observer: ClassVar[Observer | None] = None
    deliver_policy: ClassVar[str | int | datetime.datetime] = "all"
    provision: ClassVar[str] = "update"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _settings(cls, {})  # configuration mistakes fail at class creation
        _positive_int(cls, "max_bytes_in_flight", cls.max_bytes_in_flight)

    # -- the Processor protocol --------------------------------------------------------------

    async def process(self, input: Msg, /) -> Any:
        """Route one raw message to its handler and return the handler's result."""
        handler = self._amebus_resolver()(input.subject)
        if handler is None:
            msg = f"no route of {type(self).__name__} handles subject {input.subject!r}"
            raise NoRouteError(msg)
        return await handler.run(input)

    def _amebus_resolver(self) -> Callable[[str], Handler | None]:
        bound = self.__dict__.get("_amebus_bound")
        if bound is None:
            cls = type(self)
            codec = Codec(cls.converter) if cls.converter is not None else default_codec
            handlers = {r.name: _Bound(r, self, codec) for r in cls.routes}
            matcher: Matcher[Handler] = Matcher(
                ((h.route.tokens, h) for h in handlers.values()),
                hostile=_Unroutable(cls.__name__))
            bound = self.__dict__["_amebus_bound"] = (matcher.match, handlers)
        return bound[0]

    @property
    def _amebus_handlers(self) -> Mapping[str, _Bound]:
        self._amebus_resolver()
        handlers: Mapping[str, _Bound] = self.__dict__["_amebus_bound"][1]
        return handlers

    @property
    def stats(self) -> ServiceStats:
        """Live counters (per route: handled, acked, naked, termed, dead-lettered, time)."""
        stats = self.__dict__.get("_amebus_stats")
        if stats is None:
            routes = {name: h.stats for name, h in self._amebus_handlers.items()}
            stats = self.__dict__["_amebus_stats"] = ServiceStats(routes=routes)
        live = self.__dict__.get("_amebus_live")
        if live is not None:  # serving: read the engine's counters now
            _read_engine(stats, *live)
        return stats

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, js: JetStreamContext | Client, *, ready: asyncio.Event | None = None,
                    **overrides: Any) -> None:
        """Consume the durable consumer until cancelled; cancel the task to stop.

        Args:
            js: a JetStream context (or the nats-py client) of a connected client. Connect
                with ``max_reconnect_attempts=-1`` so a server restart never ends serving.
            ready: set once the consumer is bound and the first pull request is out.
            overrides: any configuration name of the class (``concurrency=8``, ...).

        Raises:
            ConfigurationError: the stream is missing, or the consumer exists with settings
                the server refuses to change.
            RuntimeError: this instance is already serving.
        """
        if self.__dict__.get("_amebus_serving"):
            msg = (f"this {type(self).__name__} instance is already serving; create another "
                   f"instance to consume in parallel")
            raise RuntimeError(msg)
        self.__dict__["_amebus_serving"] = True
        try:
            await self._serve(js, ready, overrides)
        finally:
            self.__dict__["_amebus_serving"] = False

    def running(self, js: JetStreamContext | Client, *, ready_timeout: float = 30.0,
                **overrides: Any) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
        """``async with service.running(js):`` serves in a task while the block runs: it
        starts once ready, and leaving it stops serving gracefully (see amebus.running)."""
        from amebus.running import running

        return running(self, js, ready_timeout=ready_timeout, **overrides)

    async def _serve(self, js: JetStreamContext | Client, ready: asyncio.Event | None,
                     overrides: dict[str, Any]) -> None:
        from amebus.attempts import open_attempts
        from amebus.binding import bind_consumer, check_server, connection_of
        from amebus.catchup import catch_up
        from amebus.gaveup import ensure_gave_up_stream, watch_gave_up

        cls = type(self)
        settings = _settings(cls, overrides)
        option = {name: overrides.get(name, getattr(cls, name)) for name in _SERVE_OPTIONS}
        if not cls.routes:
            msg = f"{cls.__name__} declares no routes; add Route attributes before serving"
            raise ConfigurationError(msg)
        nc, api_prefix = connection_of(js)
        check_server(nc)
        violations: list[str] = []
        with contextlib.suppress(Exception):  # the sentences are a help, never a failure
            violations = watch_violations(nc, permissions(cls, api_prefix=api_prefix, **{
                k: v for k, v in overrides.items() if k in _SERVE_OPTIONS}))
        stream, durable, filtered, config, (added, upto) = await explained(
            violations, bind_consumer(nc.jetstream(), cls, option))
        settings = _effective(cls, settings, config)
        await check_dead_letter_stream(nc.jetstream(), cls.__name__, settings.dead_letter_subject,
                                       consumed=stream, routes=cls.filter_subjects,
                                       create=option["dead_letter_stream"])
        tracer = overrides.get("error_tracer", cls.error_tracer)
        consumer = JetStreamConsumer(self, nc, tracer, settings=settings)
        consumer.skip_unrouted = not filtered
        consumer.limits = attrs.evolve(consumer.limits,
                                       server_max_deliver=config.max_deliver or -1)
        if settings.max_deliver > 0:  # unlimited attempts need no count
            consumer.attempts = await open_attempts(nc.jetstream(), stream, durable)
        batch = max(option["batch"], 2 * settings.concurrency)  # keep every worker fed
        if option["max_ack_pending"] > 0:
            batch = min(batch, option["max_ack_pending"])  # the server delivers no more anyway
        puller = Puller(nc, stream, durable, batch=batch, api_prefix=api_prefix,
                        max_bytes=_positive_int(cls, "max_bytes_in_flight",
                                                option["max_bytes_in_flight"]))
        _warn_slow_pings(nc)
        note_shared_inbox(nc, cls)
        # A message on the server's last delivery goes to the front: run before anything else.
        puller.urgent_at = max(consumer.limits.server_max_deliver, 0)
        consumer.first_reply = puller.first_reply
        await puller.start()
        consumer.on_settled = puller.release  # settled messages leave the byte budget
        consumer.on_tick = _Ticker(consumer, puller, settings).tick
        self.__dict__["_amebus_live"] = (consumer, puller)
        background: list[asyncio.Task[Any]] = []
        if added or await _catch_up_left(nc, stream, durable):
            background.append(asyncio.create_task(
                catch_up(consumer, stream, durable, added, upto, option["new_routes"]),
                name="amebus-catch-up"))
        if settings.dead_letter_subject is not None:
            try:
                await ensure_gave_up_stream(nc.jetstream(), stream, durable)
            except Exception as exc:  # e.g. no permission on $JS.EVENT: serve without it
                log.warning("%s: cannot capture MAX_DELIVERIES advisories of %s/%s (%r); "
                            "messages the server gives up on are not dead-lettered",
                            cls.__name__, stream, durable, exc)
            else:
                background.append(asyncio.create_task(
                    watch_gave_up(consumer, stream, durable), name="amebus-gave-up"))
        observer: Observer | None = overrides.get("observer", cls.observer)
        lag = ConsumerLag(nc, stream, durable)

        async def stop_pulling() -> None:
            for msg in await puller.stop():  # pulled but never started: back, uncounted
                await consumer.give_back(msg)

        try:
            if observer is not None:
                # Set first (a failed start is stopped too); Observers never lets a call raise.
                consumer.observer = (observer if isinstance(observer, Observers)
                                     else Observers(observer))
                await observer.start(Serving(service=self, nc=nc, stream=stream,
                                             durable=durable, consumer=consumer, puller=puller,
                                             lag=lag))
            log.info("%s serving %s on stream %s as durable %s", cls.__name__,
                     ", ".join(cls.filter_subjects), stream, durable)
            if ready is not None:
                ready.set()
            await consumer.run_from(puller.next, before_shutdown=stop_pulling)
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if not puller.closed:
                with contextlib.suppress(Exception):
                    await stop_pulling()
            _read_engine(self.stats, consumer, puller)  # keep the final counts
            del self.__dict__["_amebus_live"]
            await lag.stop()
            if observer is not None:
                consumer.observer = None
                await observer.stop()


async def _catch_up_left(nc: Client, stream: str, durable: str) -> bool:
    """True if a replay of added routes was interrupted (its catch-up durable exists)."""
    from nats.js.errors import NotFoundError

    try:
        await nc.jetstream().consumer_info(stream, f"{durable}_catchup")
    except NotFoundError:
        return False
    return True


def _effective(cls: type[Service], settings: Settings, config: Any) -> Settings:
    """``settings`` with the ``ack_wait`` the server actually applies to the durable."""
    ack_wait = float(config.ack_wait or settings.ack_wait)
    if abs(ack_wait - settings.ack_wait) > 1e-3:
        log.warning("%s: the consumer's ack_wait is %gs on the server, not %gs; in-progress "
                    "signals follow the server's", cls.__name__, ack_wait, settings.ack_wait)
        settings = attrs.evolve(settings, ack_wait=ack_wait)
    return settings


class _Unroutable:
    """The handler of a subject no route can mean (control characters, or bytes that were not
    UTF-8): it fails as ``NoRouteError``, so the message is termed (and dead-lettered)."""

    def __init__(self, owner: str) -> None:
        self.name = "(unroutable subject)"
        self.stats = RouteStats()
        self.timeout: float | None = None
        self.owner = owner
        self.run: Callable[[Msg], Awaitable[Any]] = self._fail

    async def _fail(self, msg: Msg) -> Any:
        error = (f"no route of {self.owner} can handle subject {msg.subject!r}: it holds "
                 f"control characters or bytes that are not UTF-8")
        raise NoRouteError(error)


def _read_engine(stats: ServiceStats, consumer: JetStreamConsumer, puller: Puller) -> None:
    stats.received, stats.skipped = puller.received, consumer.skipped
    stats.in_flight, stats.buffered = consumer.in_flight, len(puller.buffer)
    stats.bytes_in_flight = puller.unsettled
    stats.disconnects = puller.health.disconnects
    stats.dead_connections = puller.health.dead_connections
    stats.connected = consumer.nc.is_connected and not puller.health.replacing


def _positive_int(cls: type[Service], name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = (f"{cls.__name__}.{name} = {value!r}: give a positive whole number of bytes "
               f"(for example 16 * 1024 * 1024)")
        raise ConfigurationError(msg)
    return value


def _warn_slow_pings(nc: Client) -> None:
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


class _Ticker:
    """Per watchdog tick: bound the pull engine by throughput, keep buffered messages alive."""

    def __init__(self, consumer: JetStreamConsumer, puller: Puller, settings: Settings) -> None:
        self.consumer, self.puller, self.settings = consumer, puller, settings
        self.handled = 0
        self.progress_at = time.monotonic()

    async def tick(self, elapsed: float) -> None:
        consumer, puller, settings = self.consumer, self.puller, self.settings
        done = consumer.handled - self.handled
        self.handled = consumer.handled
        if puller.buffer and elapsed > 0:  # busy, not starved: hold what ack_wait/4 can start
            fits = int(done / elapsed * settings.ack_wait / 4)
            puller.limit = max(2 * settings.concurrency, min(puller.batch, fits))
        else:
            puller.limit = puller.batch
        now = time.monotonic()
        if puller.buffer and now - self.progress_at >= settings.ack_wait / 3:
            self.progress_at = now
            for msg in list(puller.buffer):
                with contextlib.suppress(Exception):
                    await consumer.nc.publish(msg.reply, b"+WPI")
        elif not puller.buffer:
            self.progress_at = now


def _by_header(decoders: Mapping[str, Callable[[bytes], Any]]) -> Callable[[Msg], Any]:
    """Decode into the union member the message's event-type header names."""

    def decode(msg: Msg) -> Any:
        name = (msg.headers or {}).get(EVENT_TYPE_HEADER)
        decoder = decoders.get(name) if name is not None else None
        if decoder is None:
            msg_ = (f"message on {msg.subject!r} has {EVENT_TYPE_HEADER} {name!r}; this route "
                    f"takes {', '.join(sorted(decoders))}: publish with Event.publish, which "
                    f"sets the header")
            raise DecodeError(msg_, errors=(f"{EVENT_TYPE_HEADER}: {name!r}",),
                              size=len(msg.data))
        return decoder(msg.data)

    return decode


def _mounted(service: Service, cls: type[Any]) -> Any:
    """The instance a mounted Service class's methods run on: one per serving service."""
    mounted: dict[type[Any], Any] = service.__dict__.setdefault("_amebus_mounted", {})
    if cls not in mounted:
        try:
            mounted[cls] = cls()
        except TypeError as exc:
            msg = (f"{type(service).__name__} mounts {cls.__name__}, whose method routes need "
                   f"an instance, but {cls.__name__}() failed ({exc}); give it a constructor "
                   f"without required arguments, or route to functions")
            raise ConfigurationError(msg) from exc
    return mounted[cls]


def _settings(cls: type[Service], overrides: Mapping[str, Any]) -> Settings:
    unknown = set(overrides) - set(_SERVE_OPTIONS) - {"error_tracer", "observer"}
    if unknown:
        msg = (f"{cls.__name__}.serve() got unknown option(s) {sorted(unknown)}; "
               f"valid: {', '.join(_SERVE_OPTIONS)}, error_tracer, observer")
        raise TypeError(msg)
    new_routes = overrides.get("new_routes", getattr(cls, "new_routes", "replay"))
    if new_routes not in ("replay", "skip"):
        msg = f"{cls.__name__}.new_routes is {new_routes!r}; use 'replay' or 'skip'"
        raise ConfigurationError(msg)
    check_observer(cls.__name__, overrides.get("observer", cls.observer))
    check_provision(cls.__name__, {name: overrides.get(name, getattr(cls, name))
                                    for name in ("deliver_policy", "provision")})
    values = {name: overrides.get(name, getattr(cls, name)) for name in _SETTINGS}
    try:
        check_options({name: overrides.get(name, getattr(cls, name))
                       for name in (*_SERVE_OPTIONS, "error_tracer", "converter")
                       if name not in values})
        return Settings(**values)
    except (TypeError, ValueError) as exc:
        msg = f"{cls.__name__}: invalid configuration: {exc}"
        raise ConfigurationError(msg) from None
