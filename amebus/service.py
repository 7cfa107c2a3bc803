"""``Service``: declare routes and configuration on a class, then ``await Service().serve(js)``.

``serve`` binds the durable pull consumer (creating the stream and consumer where asked),
pulls through :class:`~amebus.pull.Puller` and settles through
:class:`~amebus.consumer.JetStreamConsumer`; the options and serving state are in
:mod:`amebus.serving`, the binding of routes to an instance in :mod:`amebus.dispatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
from typing import TYPE_CHECKING, Any, ClassVar, Unpack

import attrs

from amebus._violations import explained, note_shared_inbox, watch_violations
from amebus.batching import pull_batch
from amebus.consumer import JetStreamConsumer
from amebus.deadletter import check_dead_letter_stream
from amebus.dispatch import Dispatch, dispatch_of
from amebus.errors import ConfigurationError
from amebus.ordering import Key, KeyOrder
from amebus.permissions import permissions
from amebus.priority import PinHooks
from amebus.pull import Puller
from amebus.routing import ServiceMeta
from amebus.serving import (
    SERVE_OPTIONS,
    Lifecycle,
    ServeOptions,
    ServiceStats,
    ServingState,
    Ticker,
    catch_up_left,
    effective,
    positive_int,
    settings_of,
    stop_tasks,
    warn_slow_pings,
)
from amebus.telemetry.observer import ConsumerLag, Observers, Serving
from amebus.tracing import ErrorTracer

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.telemetry.observer import Observer

__all__ = ["Service", "ServiceStats"]

log = logging.getLogger(__name__)


class Service(PinHooks, metaclass=ServiceMeta):
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
        key: for every route without its own ``Route(key=)``: messages with the same key run
            one at a time in stream order, others concurrently (a subject token position, an
            event attribute or a function of the event; None: no order). docs/ordering.md.
        standby, priority_timeout, overflow: active/standby and overflow instances through
            server priority groups (:class:`~amebus.priority.PinHooks`, docs/deployment.md).
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
    key: ClassVar[Key | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        settings_of(cls, {})  # configuration mistakes fail at class creation
        positive_int(cls, "max_bytes_in_flight", cls.max_bytes_in_flight)

    # -- the Processor protocol --------------------------------------------------------------

    async def process(self, input: Msg, /) -> Any:
        """Route one raw message to its handler and return the handler's result."""
        return await self._amebus_dispatch().process(input)

    def _amebus_dispatch(self) -> Dispatch:
        dispatch = dispatch_of(self)
        assert dispatch is not None  # a Service class is a ServiceMeta instance
        return dispatch

    def _amebus_state(self) -> ServingState:
        # In __dict__, created on first use: a subclass's __init__ need not call super().
        state: ServingState | None = self.__dict__.get("_amebus_serving")
        if state is None:
            state = self.__dict__["_amebus_serving"] = ServingState()
        return state

    @property
    def stats(self) -> ServiceStats:
        """Live counters (per route: handled, acked, naked, termed, dead-lettered, time)."""
        return self._amebus_stats()

    def _amebus_stats(self) -> ServiceStats:
        state = self._amebus_state()
        if state.stats is None:
            routes = {name: h.stats for name, h in self._amebus_dispatch().handlers.items()}
            state.stats = ServiceStats(routes=routes)
        state.read_engine()  # serving: read the engine's counters now
        return state.stats

    # -- serving ----------------------------------------------------------------------------

    async def serve(self, js: JetStreamContext | Client, *, ready: asyncio.Event | None = None,
                    **overrides: Unpack[ServeOptions]) -> None:
        """Consume the durable consumer until cancelled; cancel the task to stop.

        Args:
            js: a JetStream context (or the nats-py client) of a connected client. Connect
                with ``max_reconnect_attempts=-1`` so a server restart never ends serving.
            ready: set once the consumer is bound and the first pull request is out.
            overrides: any configuration name of the class (``concurrency=8``, ...):
                :class:`~amebus.serving.ServeOptions`.

        Raises:
            ConfigurationError: the stream is missing, or the consumer exists with settings
                the server refuses to change.
            RuntimeError: this instance is already serving.
        """
        state = self._amebus_state()
        if state.lifecycle is not Lifecycle.IDLE:
            msg = (f"this {type(self).__name__} instance is already serving; create another "
                   f"instance to consume in parallel")
            raise RuntimeError(msg)
        state.lifecycle = Lifecycle.BINDING
        try:
            await self._serve(js, ready, dict(overrides), state)
        finally:
            state.lifecycle = Lifecycle.IDLE

    def running(self, js: JetStreamContext | Client, *, ready_timeout: float = 30.0,
                **overrides: Unpack[ServeOptions]
                ) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
        """``async with service.running(js):`` serves in a task while the block runs: it
        starts once ready, and leaving it stops serving gracefully (see amebus.running)."""
        from amebus.running import running

        return running(self, js, ready_timeout=ready_timeout, **overrides)

    async def _serve(self, js: JetStreamContext | Client, ready: asyncio.Event | None,
                     overrides: dict[str, Any], state: ServingState) -> None:
        from amebus.attempts import open_attempts
        from amebus.binding import bind_consumer, check_server, connection_of
        from amebus.catchup import catch_up
        from amebus.gaveup import ensure_gave_up_stream, watch_gave_up
        from amebus.pinning import for_service

        cls = type(self)
        settings = settings_of(cls, overrides)
        option = {name: overrides.get(name, getattr(cls, name)) for name in SERVE_OPTIONS}
        if not cls.routes:
            msg = f"{cls.__name__} declares no routes; add Route attributes before serving"
            raise ConfigurationError(msg)
        order = KeyOrder.of(cls.__name__, self._amebus_dispatch().handlers.values(),
                            option["key"])  # None: no route has a key
        nc, api_prefix = connection_of(js)
        check_server(nc)
        violations: list[str] = []
        with contextlib.suppress(Exception):  # the sentences are a help, never a failure
            violations = watch_violations(nc, permissions(cls, api_prefix=api_prefix, **{
                k: v for k, v in overrides.items() if k in SERVE_OPTIONS}))
        stream, durable, filtered, config, (added, upto) = await explained(
            violations, bind_consumer(nc.jetstream(), cls, option))
        settings = effective(cls, settings, config)
        await check_dead_letter_stream(nc.jetstream(), cls.__name__, settings.dead_letter_subject,
                                       consumed=stream, routes=cls.filter_subjects,
                                       create=option["dead_letter_stream"])
        limits = attrs.evolve(settings.limits(), server_max_deliver=config.max_deliver or -1)
        batch = max(option["batch"], 2 * settings.concurrency)  # keep every worker fed
        if option["max_ack_pending"] > 0:
            batch = min(batch, option["max_ack_pending"])  # the server delivers no more anyway
        batch = pull_batch(cls.__name__, (r.route.batch for r in cls.routes), batch,
                           option["max_ack_pending"])  # batch routes: room for two batches
        puller = Puller(nc, stream, durable, batch=batch, api_prefix=api_prefix,
                        max_bytes=positive_int(cls, "max_bytes_in_flight",
                                               option["max_bytes_in_flight"]))
        puller.priority = for_service(self, nc, f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}."
                                      f"{durable}", option)  # None: no priority group
        warn_slow_pings(nc)
        note_shared_inbox(nc, cls)
        # A message on the server's last delivery goes to the front: run before anything else.
        puller.urgent_at = max(limits.server_max_deliver, 0)
        observer: Observer | None = overrides.get("observer", cls.observer)
        consumer = JetStreamConsumer(
            self, nc, overrides.get("error_tracer", cls.error_tracer), settings=settings,
            resolver=self._amebus_dispatch(), skip_unrouted=not filtered, limits=limits,
            attempts=(await open_attempts(nc.jetstream(), stream, durable)
                      if settings.max_deliver > 0 else None),  # unlimited: no count needed
            first_reply=puller.first_reply,
            # Observers never lets a call raise; a failed start is stopped too.
            observer=(observer if observer is None or isinstance(observer, Observers)
                      else Observers(observer)),
            on_settled=puller.release,  # settled messages leave the byte budget
            on_tick=Ticker(puller, settings).tick, parked=puller.parked,
            order=None if order is None else order.pulling(puller))
        await puller.start()
        state.engine, state.lifecycle = (consumer, puller), Lifecycle.SERVING
        background: list[asyncio.Task[Any]] = []
        if added or await catch_up_left(nc, stream, durable):
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
        lag = ConsumerLag(nc, stream, durable)

        async def stop_pulling() -> None:
            for msg in await puller.stop():  # pulled but never started: back, uncounted
                await consumer.give_back(msg)

        try:
            if observer is not None:
                await observer.start(Serving(service=self, nc=nc, stream=stream,
                                             durable=durable, consumer=consumer, puller=puller,
                                             lag=lag))
            log.info("%s serving %s on stream %s as durable %s", cls.__name__,
                     ", ".join(cls.filter_subjects), stream, durable)
            if ready is not None:
                ready.set()
            await consumer.run_from(puller.next, before_shutdown=stop_pulling)
        finally:
            await stop_tasks(background)
            if puller.priority is not None:  # handlers are done: a standby may take over
                await puller.priority.stop(unpin=True)
            if not puller.closed:
                with contextlib.suppress(Exception):
                    await stop_pulling()
            self._amebus_stats()  # keep the final counts
            state.engine = None
            await lag.stop()
            if observer is not None:
                consumer.observer = None
                await observer.stop()
