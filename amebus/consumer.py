"""Dispatch and settlement: run each message's handler and settle it exactly once.

``JetStreamConsumer`` takes messages (from the pull engine, or any async iterator), runs them
through a processor with bounded concurrency, and acks, naks or terms each one by the
settlement table in ``docs/settlement.md``. A watchdog sends in-progress signals for long
handlers and cancels those past their timeout; no timer is created per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from amebus import _checks
from amebus.deadletter import one_line, publish_dead_letter, reply_meta
from amebus.errors import DecodeError, Nak, NoRouteError, Term
from amebus.tracing import Decision, ErrorTracer, Failure, LoggingTracer, Stage

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

__all__ = ["HandlerTimeoutError", "JetStreamConsumer", "Processor", "RouteStats", "Settings"]

log = logging.getLogger(__name__)


class Processor(Protocol):
    """Anything with ``async def process(self, input)``: the seed's Processor."""

    async def process(self, input: Msg, /) -> Any:
        """Handle one message; raise to fail it, ``Nak``/``Term`` to steer settlement."""


class HandlerTimeoutError(TimeoutError):
    """A handler ran past its timeout and was cancelled."""


@attrs.frozen(kw_only=True)
class Settings:
    """How messages are run and settled (the ``Service`` class attributes of the same names)."""

    concurrency: int = attrs.field(default=1, validator=_checks.integer(minimum=1))
    ack_wait: float = attrs.field(default=30.0, validator=_checks.seconds(
        strict=True, maximum=_checks.ACK_WAIT_MAX))
    max_deliver: int = attrs.field(default=5, validator=_checks.integer(
        minimum=-1, extra=" (0 or -1: unlimited)"))
    backoff: tuple[float, ...] = attrs.field(default=(1.0, 5.0, 30.0, 120.0),
                                             converter=_checks.delays)
    timeout: float | None = attrs.field(default=300.0, validator=_checks.optional_seconds)
    dead_letter_subject: str | None = attrs.field(default=None, validator=_checks.subject)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_checks.seconds())

    def retry_delay(self, deliveries: int) -> float:
        """The nak delay after delivery number ``deliveries`` failed."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(deliveries, 1), len(self.backoff)) - 1]


@attrs.define
class RouteStats:
    """Counters of one route (``handler_seconds`` sums the time its handler ran)."""

    handled: int = 0
    acked: int = 0
    naked: int = 0
    termed: int = 0
    dead_lettered: int = 0
    handler_seconds: float = 0.0


class Handler(Protocol):
    """A resolved route: its name, counters, timeout (None: the settings'), and how to run it
    on a message."""

    name: str
    stats: RouteStats
    timeout: float | None
    run: Callable[[Msg], Awaitable[Any]]


@attrs.define(eq=False)
class _Slot:
    """A worker: the message it holds, since when, and until when its handler may run."""

    task: asyncio.Task[None] | None = None
    msg: Msg | None = None
    started: float = 0.0
    deadline: float = 0.0
    progress_at: float = 0.0
    timed_out: bool = False
    cancels: int = 0
    """Cancellations the watchdog sent the current handler (one per tick past its deadline)."""

    def forgive(self, task: asyncio.Task[Any] | None) -> None:
        """Withdraw the watchdog's cancellations of this handler from ``task``'s count."""
        if task is not None:
            for _ in range(self.cancels):
                task.uncancel()
        self.cancels, self.timed_out = 0, False


_NEVER = float("inf")


class _ProcessorHandler:
    def __init__(self, processor: Processor) -> None:
        self.name = type(processor).__name__
        self.stats = RouteStats()
        self.timeout: float | None = None  # the settings' timeout
        self.run: Callable[[Msg], Awaitable[Any]] = processor.process


class JetStreamConsumer:
    """Runs a processor over JetStream messages and settles every message exactly once.

    Args:
        processor: a ``Service`` instance (routes by subject) or any ``Processor``.
        nc: the connected nats-py client (acks go through it; result events are published
            through its JetStream context).
        error_tracer: receives every failure; defaults to :class:`LoggingTracer`.
        settings: concurrency, timeouts, retry backoff and dead-lettering.
    """

    def __init__(self, processor: Processor, nc: Client, error_tracer: ErrorTracer | None = None,
                 *, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.tracer = error_tracer or LoggingTracer()
        resolve: Callable[[str], Handler | None] | None = getattr(
            processor, "_amebus_resolver", lambda: None)()
        if resolve is None:
            single = _ProcessorHandler(processor)
            self.handlers: dict[str, Handler] = {single.name: single}
            resolve = lambda subject: single  # noqa: E731
        else:
            self.handlers = dict(getattr(processor, "_amebus_handlers", {}))
        self._resolve = resolve
        self.owner = type(processor).__name__
        self.stopping = False
        self._slots: list[_Slot] = []
        self.skipped = 0
        self.skip_unrouted = False
        """Ack (not term) messages no route handles: set when the consumer is unfiltered."""
        self.on_tick: Callable[[float], Awaitable[None]] | None = None

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
        self._slots = [_Slot() for _ in range(self.settings.concurrency)]
        for index, slot in enumerate(self._slots):
            slot.task = asyncio.create_task(self._worker(slot, take),
                                            name=f"amebus-worker-{index}")
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

    async def _worker(self, slot: _Slot, take: Callable[[], Awaitable[Msg | None]]) -> None:
        while not self.stopping:
            try:
                msg = await take()
                if msg is None:
                    return
                await self.handle(msg, slot)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if slot.timed_out and not self.stopping and task is not None:
                    slot.forgive(task)  # a timeout that fired just after its handler finished
                    continue
                raise

    # -- one message ------------------------------------------------------------------------

    async def handle(self, msg: Msg, slot: _Slot | None = None) -> Decision:
        """Run one message through its handler and settle it; return the decision taken."""
        handler = self._resolve(msg.subject)
        if handler is None:
            return await self._unrouted(msg)
        if slot is None:
            slot = _Slot(task=asyncio.current_task())
        start = time.monotonic()
        timeout = handler.timeout if handler.timeout is not None else self.settings.timeout
        slot.deadline = start + timeout if timeout is not None else _NEVER
        slot.timed_out, slot.cancels = False, 0
        slot.started, slot.msg = start, msg  # the watchdog watches it from here
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
                stats.handler_seconds += time.monotonic() - start
            if result is not None:
                stage = "post-process"
                events = _events_of(result)
                if events:
                    await self.publish_events(events)
            decision = _ACK
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if not slot.timed_out and task is not None and not task.cancelling():
                # Nobody cancelled this worker: the handler raised it (it awaited a future
                # cancelled elsewhere). An ordinary failure; re-raising would end the worker.
                decision = await self._failed(msg, handler, stage, cancelled)
            elif not slot.timed_out:  # shutdown: give it back at once, never ack
                slot.msg = None
                await self.settle(msg, Decision.nak(0.0), handler)
                raise
            else:
                slot.forgive(task)
                error = HandlerTimeoutError(f"handler {handler.name} ran past its {timeout}s "
                                            f"timeout and was cancelled")
                decision = await self._failed(msg, handler, stage, error)
        except Nak as nak:
            deliveries = reply_meta(msg.reply)[2]
            if 0 < self.settings.max_deliver <= deliveries:  # no delivery left to retry on
                decision = await self._failed(msg, handler, stage, nak)
            else:
                delay = nak.delay
                try:  # Nak checks its delay; one changed after raising is a handler failure
                    decision = Decision.nak(
                        self.settings.retry_delay(deliveries) if delay is None else delay)
                except (TypeError, ValueError) as bad:
                    decision = await self._failed(msg, handler, stage, bad)
        except Term as term:
            decision = Decision.term(term.reason or "terminated by the handler")
        except BaseException as exc:
            if isinstance(exc, DecodeError | NoRouteError):  # a nested Service's, too
                stage = "pre-process"
            decision = await self._failed(msg, handler, stage, exc)
        finally:
            slot.msg = None
        await self.settle(msg, decision, handler)
        return decision

    async def _unrouted(self, msg: Msg) -> Decision:
        if self.skip_unrouted:  # not ours: the consumer takes the whole stream
            self.skipped += 1
            await self.settle(msg, _ACK)
            return _ACK
        error = NoRouteError(f"no route of {self.owner} handles subject {msg.subject!r}")
        decision = await self._failed(msg, None, "pre-process", error)
        await self.settle(msg, decision)
        return decision

    async def publish_events(self, events: list[Any]) -> None:
        """Publish a handler's result events, waiting for the stream to store each one."""
        from amebus.publish import publish_many

        await publish_many(self.js, events)

    async def _failed(self, msg: Msg, handler: Handler | None, stage: Stage,
                      error: BaseException) -> Decision:
        stream, seq, deliveries = reply_meta(msg.reply)
        retryable = stage != "pre-process"
        dead_letter = self.settings.dead_letter_subject is not None
        if not retryable:
            decision = Decision.term(f"{stage}: {one_line(error)}", dead_letter=dead_letter)
        elif 0 < self.settings.max_deliver <= deliveries:
            limit = self.settings.max_deliver
            reason = (f"failed on delivery {deliveries} of {limit}: " if deliveries <= limit else
                      f"failed on delivery {deliveries} (the spare after max_deliver {limit}): ")
            decision = Decision.term(reason + one_line(error), dead_letter=dead_letter)
        else:
            decision = Decision.nak(self.settings.retry_delay(deliveries))
        failure = Failure(stage=stage, error=error, subject=msg.subject, stream=stream,
                          stream_seq=seq, deliveries=deliveries,
                          route=handler.name if handler is not None else None,
                          retryable=retryable, decision=decision)
        try:
            chosen = self.tracer.trace(failure)
        except Exception:
            log.exception("the error tracer %r raised; keeping amebus's decision", self.tracer)
            chosen = None
        decision = chosen or decision
        subject = self.settings.dead_letter_subject
        if decision.action == "term" and decision.dead_letter and subject is not None:
            instead = await publish_dead_letter(self.js, subject, msg, failure, decision,
                                                settings=self.settings, tracer=self.tracer,
                                                max_payload=getattr(self.nc, "max_payload", None))
            if instead is not None:
                return instead
            if handler is not None:
                handler.stats.dead_lettered += 1
        return decision

    async def settle(self, msg: Msg, decision: Decision, handler: Handler | None = None) -> None:
        """Send ``decision`` for ``msg`` (once: skipped if the handler settled it itself)."""
        if not msg.reply or msg.is_acked:  # not JetStream, or the handler settled it itself
            return
        stats = handler.stats if handler is not None else None
        if decision.action == "ack":
            payload = b"+ACK"
            if stats:
                stats.acked += 1
        elif decision.action == "nak":
            payload = b"-NAK"
            if decision.delay > 0:
                payload += b" " + json.dumps({"delay": int(decision.delay * 1e9)}).encode()
            if stats:
                stats.naked += 1
        else:
            payload = b"+TERM"
            if decision.reason:
                payload += b" " + one_line(decision.reason).encode()
            if stats:
                stats.termed += 1
        try:
            await self.nc.publish(msg.reply, payload)
        except Exception as exc:  # the server redelivers after ack_wait: nothing is lost
            log.warning("could not settle %r (%s): %r", msg.subject, decision.action, exc)

    # -- watchdog -------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        settings = self.settings
        progress_every = settings.ack_wait / 3
        timeouts = [h.timeout for h in self.handlers.values()] + [settings.timeout]
        tick = min(1.0, progress_every / 2, *(t / 4 for t in timeouts if t is not None))
        last = time.monotonic()
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            for slot in self._slots:
                msg = slot.msg
                if msg is None:
                    continue
                if now >= slot.deadline and slot.task is not None:
                    # Past the deadline: cancel, and again at every tick while the handler
                    # runs on (one that catches CancelledError once must not escape its
                    # timeout); no in-progress signal for it any more.
                    slot.timed_out = True
                    slot.cancels += 1
                    slot.task.cancel()
                elif now - max(slot.progress_at, slot.started) >= progress_every and msg.reply:
                    slot.progress_at = now
                    with contextlib.suppress(Exception):
                        await self.nc.publish(msg.reply, b"+WPI")
            if self.on_tick is not None:
                await self.on_tick(now - last)
            last = now

    @property
    def in_flight(self) -> int:
        """Messages being handled now."""
        return sum(1 for slot in self._slots if slot.msg is not None)

    @property
    def handled(self) -> int:
        """Messages whose handler has run, over every route."""
        return sum(handler.stats.handled for handler in self.handlers.values())


_ACK = Decision.ack()


def _events_of(result: Any) -> list[Any]:
    from amebus.events import Event

    if isinstance(result, Event):
        return [result]
    if isinstance(result, list | tuple):
        events = [item for item in result if isinstance(item, Event)]
        if events and len(events) != len(result):
            msg = (f"the handler returned {result!r}, which mixes events and other values; "
                   f"return an Event, a list of Events, or None")
            raise TypeError(msg)
        return events
    return []
