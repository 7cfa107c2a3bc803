"""Running messages: workers with bounded concurrency, a watchdog, bounded shutdown.

``JetStreamConsumer`` takes messages (from the pull engine, or any async iterator) and runs
each one: resolve its route -> run the handler -> classify what happened ->
:func:`amebus.settlement.decide` -> send (the :class:`~amebus.settler.Settler` half), by the
settlement table in ``docs/settlement.md``. A watchdog sends in-progress signals for long
handlers and cancels those past their timeout (:mod:`amebus.watchdog`); no timer is
created per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from amebus.batch_runner import Batches
from amebus.correlation import correlation_headers
from amebus.dispatch import dispatch_of
from amebus.errors import (
    DecodeError,
    HandlerTimeoutError,
    Nak,
    NoRouteError,
    Term,
)
from amebus.handlers import Handler, Processor, ProcessorHandler, Resolver, events_of
from amebus.settlement import Limits, Settings, deliveries_of, reply_meta
from amebus.settler import ACK, FIRST, Run, Settler
from amebus.tracing import Decision, ErrorTracer, Stage
from amebus.watchdog import Slot, watch

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from amebus.attempts import Attempts
    from amebus.ordering import KeyOrder
    from amebus.telemetry.observer import Observer

__all__ = ["JetStreamConsumer", "Slot", "Tick"]

Tick = Callable[["JetStreamConsumer", float], Awaitable[None]]
"""Called by the watchdog at every tick with the seconds since the last one."""


_NEVER = float("inf")


class JetStreamConsumer(Settler):
    """Runs a processor over JetStream messages and settles every message exactly once.

    Args:
        processor: a ``Service`` instance (routes by subject) or any ``Processor``.
        nc: the connected nats-py client (acks go through it; result events are published
            through its JetStream context).
        error_tracer: receives every failure; defaults to :class:`LoggingTracer`.
        settings: concurrency, timeouts, retry backoff and dead-lettering.
        resolver: the routes to run (default: a ``Service``'s own, else ``processor`` as one
            route).
        skip_unrouted: ack (not term) messages no route handles (the consumer is unfiltered).
        limits: the limits settlement decides against (default: the settings').
        attempts: where handler attempts are counted (None: the server's deliveries).
        first_reply: the reply-subject prefix of a first delivery
            (``$JS.ACK.<stream>.<durable>.1.``), checked before parsing the reply.
        observer: told where each delivery starts, ends and is settled.
        on_settled: called with every message settled (the pull engine's byte budget).
        on_tick: called by the watchdog at every tick (the pull engine's flow control).
        parked: where messages taken but held back unstarted are kept (the pull engine's
            ``parked``, so they count against its window); see :meth:`park`.
        order: runs keyed routes one message per key at a time (:mod:`amebus.ordering`).
    """

    def __init__(self, processor: Processor, nc: Client, error_tracer: ErrorTracer | None = None,
                 *, settings: Settings | None = None, resolver: Resolver | None = None,
                 skip_unrouted: bool = False, limits: Limits | None = None,
                 attempts: Attempts | None = None, first_reply: str = "",
                 observer: Observer | None = None,
                 on_settled: Callable[[Msg], None] | None = None,
                 on_tick: Tick | None = None, parked: dict[str, Msg] | None = None,
                 order: KeyOrder | None = None) -> None:
        super().__init__(nc, error_tracer, settings or Settings(),
                         owner=type(processor).__name__, skip_unrouted=skip_unrouted,
                         limits=limits, attempts=attempts, observer=observer,
                         on_settled=on_settled, parked=parked)
        resolver = resolver or dispatch_of(processor)
        if resolver is None:
            single = ProcessorHandler(processor)
            self.handlers: dict[str, Handler] = {single.name: single}
            self.resolve: Callable[[str], Handler | None] = lambda subject: single
        else:
            self.handlers = dict(resolver.handlers)
            self.resolve = resolver.resolve
        self.first_reply = first_reply
        self.on_tick = on_tick
        self._slots: list[Slot] = []
        self.batches = Batches(self)  # the batch routes' collectors (amebus.batch_runner)
        self.batched = self.batches.collectors  # by handler: empty without batch routes
        self.order = order

    # -- running --------------------------------------------------------------------------

    async def run(self, messages: AsyncIterator[Msg]) -> None:
        """Process ``messages`` until they end or this coroutine is cancelled.

        On cancellation: stop taking messages, wait up to ``shutdown_timeout`` for running
        handlers, cancel the rest (they are nak'ed for immediate redelivery), then re-raise.
        """
        lock = asyncio.Lock()

        async def take() -> Msg | None:
            async with lock:
                return await anext(messages, None)

        await self.run_from(take)

    async def run_from(self, take: Callable[[], Awaitable[Msg | None]], *,
                       before_shutdown: Callable[[], Awaitable[None]] | None = None) -> None:
        """Like :meth:`run`, with ``take()`` returning the next message or None at the end.

        ``before_shutdown`` runs first when cancelled (the pull engine stops pulling there).
        """
        self._slots = [Slot() for _ in range(self.settings.concurrency)]
        take = take if self.order is None else self.order.taking(take, self)
        for index, slot in enumerate(self._slots):
            slot.task = asyncio.create_task(self._worker(slot, take),
                                            name=f"amebus-worker-{index}")
        self._slots += self.batches.start()  # a runner per batch route, watched like a worker
        watchdog = asyncio.create_task(self._watchdog(), name="amebus-watchdog")
        workers = [slot.task for slot in self._slots if slot.task is not None]
        try:
            # Not gather(): cancelling a gather cancels the workers at once, and running
            # handlers must get shutdown_timeout first.
            done, _ = await asyncio.wait(workers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # a worker's failure ends the run, as before
        except asyncio.CancelledError:
            self.stopping = True
            if before_shutdown is not None:
                await before_shutdown()
            await self._shutdown(workers)
            raise
        finally:
            self.stopping = True
            for task in workers:  # after a worker's failure: the others stop too (nak 0)
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            await self.give_back_parked()  # held back unstarted: back, uncounted
            watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watchdog

    async def _shutdown(self, workers: list[asyncio.Task[None]]) -> None:
        running = [t for t, s in zip(workers, self._slots, strict=True)
                   if not t.done() and s.msg is not None]
        idle = [t for t, s in zip(workers, self._slots, strict=True)
                if not t.done() and s.msg is None]
        for task in idle:
            task.cancel()
        if running:
            _, late = await asyncio.wait(running, timeout=self.settings.shutdown_timeout)
            for task in late:
                task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _worker(self, slot: Slot, take: Callable[[], Awaitable[Msg | None]]) -> None:
        while not self.stopping:
            try:
                msg = await take()
                if msg is None:
                    self.batches.end()  # collected batches run now
                    return
                await (self.handle(msg, slot) if self.order is None
                       else self.order.run(self, msg, slot))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if slot.timed_out and not self.stopping and task is not None:
                    slot.forgive(task)  # a timeout that fired just after its handler finished
                    continue
                raise

    # -- one message ------------------------------------------------------------------------

    async def handle(self, msg: Msg, slot: Slot | None = None, *,
                     route: Handler | None = None) -> Decision:
        """Run one message through its handler (``route``: resolved already) and settle it;
        return the decision taken."""
        handler = self.resolve(msg.subject) if route is None else route
        if handler is None:
            return await self.unrouted(msg)
        if self.batched and handler in self.batched:  # collected; settled by its batch's run
            return await self.batches.add(msg, handler)
        if slot is None:
            slot = Slot(task=asyncio.current_task())
        first = self.first_reply
        if first and msg.reply.startswith(first):
            run = FIRST  # a first delivery: attempt 1, nothing stored, nothing to read
        else:
            run = await self.run_of(msg)
            if run.exhausted:
                return await self.exhausted(msg, handler, run)
        start = time.monotonic()
        timeout = handler.timeout if handler.timeout is not None else self.settings.timeout
        slot.deadline = start + timeout if timeout is not None else _NEVER
        slot.timed_out, slot.cancels = False, 0
        slot.started, slot.msg = start, msg  # the watchdog watches it from here
        observer = self.observer
        if observer is not None:
            observer.delivery_started(msg, handler)
        stage: Stage = "business"
        try:
            try:
                result = await handler.run(msg)
                if slot.timed_out:  # it swallowed the watchdog's cancellation: still a timeout
                    raise asyncio.CancelledError
            finally:
                slot.deadline = _NEVER  # only the handler itself is timed
                stats = handler.stats
                stats.handled += 1
                elapsed = time.monotonic() - start
                stats.handler_seconds += elapsed
                if observer is not None:
                    observer.handler_finished(msg, handler, elapsed)
            if result is not None:
                stage = "post-process"
                events = events_of(result)
                if events:
                    await self.publish_events(events, msg)
            decision = ACK
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if not slot.timed_out and task is not None and not task.cancelling():
                # Nobody cancelled this worker: the handler raised it (it awaited a future
                # cancelled elsewhere). An ordinary failure; re-raising would end the worker.
                decision = await self.failed(msg, handler, stage, cancelled, run)
            elif not slot.timed_out:  # shutdown: give it back uncounted, never ack
                slot.msg = None
                await self.give_back(msg, handler, run, started=True)
                raise
            else:
                slot.forgive(task)
                error = HandlerTimeoutError(f"handler {handler.name} ran past its {timeout}s "
                                            f"timeout and was cancelled")
                decision = await self.failed(msg, handler, stage, error, run)
        except (Nak, Term) as signal:
            decision = await self.signalled(msg, handler, stage, run, signal)
        except BaseException as exc:
            if isinstance(exc, DecodeError | NoRouteError):  # a nested Service's, too
                stage = "pre-process"
            decision = await self.failed(msg, handler, stage, exc, run)
        finally:
            slot.msg = None
        await self.finish(msg, decision, handler, run)
        return decision

    async def run_of(self, msg: Msg) -> Run:
        """This delivery's attempt bookkeeping: :data:`~amebus.settler.FIRST` for a first
        delivery; a redelivery reads (and writes) its attempt count."""
        reply, first = msg.reply, self.first_reply
        deliveries = 1 if first and reply.startswith(first) else deliveries_of(reply)
        if deliveries <= 1:
            return FIRST
        run = Run(reply_meta(reply)[1], deliveries)
        await self.begin(run)
        return run

    async def publish_events(self, events: list[Any], msg: Msg | None = None) -> None:
        """Publish a handler's result events, waiting for the stream to store each one; they
        carry ``msg``'s correlation id and trace context (:mod:`amebus.correlation`)."""
        from amebus.publish import publish_many

        await publish_many(self.js, events,
                           headers=None if msg is None else correlation_headers(msg))

    # -- watchdog -------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        timeouts = [h.timeout for h in self.handlers.values()] + [self.settings.timeout]
        await watch(self._slots, ack_wait=self.settings.ack_wait, timeouts=timeouts,
                    progress=lambda msg: self.progress(msg), on_tick=self._tick)

    async def _tick(self, elapsed: float) -> None:
        if self.order is not None:
            self.order.tick(self)
        if self.on_tick is not None:
            await self.on_tick(self, elapsed)

    @property
    def in_flight(self) -> int:
        """Messages being handled now."""
        return sum(1 for slot in self._slots if slot.msg is not None)

    @property
    def handled(self) -> int:
        """Messages whose handler has run, over every route."""
        return sum(handler.stats.handled for handler in self.handlers.values())
