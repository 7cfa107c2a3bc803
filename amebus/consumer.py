"""Dispatch and settlement: run each message's handler and settle it exactly once.

``JetStreamConsumer`` takes messages (from the pull engine, or any async iterator), runs them
through a processor with bounded concurrency, and acks, naks or terms each one by the
settlement table in ``docs/settlement.md``. A watchdog sends in-progress signals for long
handlers and cancels those past their timeout; no timer is created per message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from amebus import _checks
from amebus.correlation import correlation_headers
from amebus.deadletter import one_line, publish_dead_letter, reply_meta
from amebus.errors import DecodeError, Nak, NoRouteError, Term
from amebus.settlement import (
    Limits,
    Outcome,
    decide,
    deliveries_of,
    encode,
    server_max_deliver,
)
from amebus.telemetry.logs import log_settlement
from amebus.tracing import Decision, ErrorTracer, Failure, LoggingTracer, Stage

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.attempts import Attempts
    from amebus.telemetry.observer import Observer

__all__ = ["AttemptsExhaustedError", "HandlerTimeoutError", "JetStreamConsumer", "Processor",
           "RouteStats", "Settings"]

log = logging.getLogger(__name__)


class Processor(Protocol):
    """Anything with ``async def process(self, input)``: the seed's Processor."""

    async def process(self, input: Msg, /) -> Any:
        """Handle one message; raise to fail it, ``Nak``/``Term`` to steer settlement."""


class HandlerTimeoutError(TimeoutError):
    """A handler ran past its timeout and was cancelled."""


class AttemptsExhaustedError(RuntimeError):
    """A redelivered message whose handler already failed or crashed ``max_deliver`` times."""


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
    server_max_deliver: int | None = attrs.field(default=None)
    """The server's max_deliver, a crash backstop above ``max_deliver`` (None: the default of
    :func:`amebus.settlement.server_max_deliver`)."""

    @server_max_deliver.validator
    def _check_server_max_deliver(self, _: attrs.Attribute[int | None], value: int | None
                                  ) -> None:
        if value is not None and value > 0 and 0 < self.max_deliver >= value:
            msg = (f"server_max_deliver {value!r} must be above max_deliver "
                   f"{self.max_deliver!r} (or None for {max(10 * self.max_deliver, 50)}, or "
                   f"-1 for unlimited): the server's limit is the backstop above amebus's")
            raise ValueError(msg)

    def limits(self) -> Limits:
        """The settlement limits these settings ask for."""
        return Limits(self.max_deliver,
                      server_max_deliver(self.max_deliver, self.server_max_deliver),
                      self.backoff)

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


@attrs.define
class _Run:
    """One delivery's attempt bookkeeping: ``attempt`` is its handler attempt (1 the first
    time), ``stored`` what the attempt store holds for it (0: nothing)."""

    seq: int
    deliveries: int
    attempt: int = 1
    stored: int = 0
    exhausted: bool = False


_FIRST = _Run(0, 1)
"""Every first delivery's bookkeeping (shared: nothing mutates a run with nothing stored)."""


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
        self.limits = self.settings.limits()
        """The limits settlement decides against; ``serve`` sets the server's actual one."""
        self.attempts: Attempts | None = None
        """Where handler attempts are counted (None: by the server's deliveries)."""
        self.first_reply = ""
        """The reply-subject prefix of a first delivery (``$JS.ACK.<stream>.<durable>.1.``),
        checked before parsing the reply: set by ``serve``."""
        self.observer: Observer | None = None
        """Told where each delivery starts, ends and is settled (None: nothing is called)."""
        self.on_settled: Callable[[Msg], None] | None = None
        """Called with every message :meth:`settle` is given (the pull engine's byte budget)."""

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
        reply = msg.reply
        first = self.first_reply
        deliveries = 1 if first and reply.startswith(first) else deliveries_of(reply)
        run = _FIRST  # a first delivery: attempt 1, nothing stored, nothing to read
        if deliveries > 1:  # only a redelivery reads (and writes) its attempt count
            run = _Run(reply_meta(msg.reply)[1], deliveries)
            await self._begin(run)
            if run.exhausted:
                spent = AttemptsExhaustedError(
                    f"the handler failed or crashed on {run.attempt} attempts")
                decision = await self._failed(msg, handler, "business", spent, run, "exhausted")
                await self._finish(msg, decision, handler, run)
                return decision
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
                events = _events_of(result)
                if events:
                    await self.publish_events(events, msg)
            decision = _ACK
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if not slot.timed_out and task is not None and not task.cancelling():
                # Nobody cancelled this worker: the handler raised it (it awaited a future
                # cancelled elsewhere). An ordinary failure; re-raising would end the worker.
                decision = await self._failed(msg, handler, stage, cancelled, run)
            elif not slot.timed_out:  # shutdown: give it back uncounted, never ack
                slot.msg = None
                await self.give_back(msg, handler, run, started=True)
                raise
            else:
                slot.forgive(task)
                error = HandlerTimeoutError(f"handler {handler.name} ran past its {timeout}s "
                                            f"timeout and was cancelled")
                decision = await self._failed(msg, handler, stage, error, run)
        except Nak as nak:
            limits = self.limits
            if limits.last_attempt(run.attempt) or limits.last_delivery(run.deliveries):
                decision = await self._failed(msg, handler, stage, nak, run, "nak")
            else:
                try:  # Nak checks its delay; one changed after raising is a handler failure
                    decision = decide("nak", attempt=run.attempt, deliveries=run.deliveries,
                                      limits=limits, delay=nak.delay)
                except (TypeError, ValueError) as bad:
                    decision = await self._failed(msg, handler, stage, bad, run)
        except Term as term:
            decision = decide("term", attempt=run.attempt, deliveries=run.deliveries,
                              limits=self.limits, error=term.reason)
        except BaseException as exc:
            if isinstance(exc, DecodeError | NoRouteError):  # a nested Service's, too
                stage = "pre-process"
            decision = await self._failed(msg, handler, stage, exc, run)
        finally:
            slot.msg = None
        await self._finish(msg, decision, handler, run)
        return decision

    async def _begin(self, run: _Run) -> None:
        """Number this redelivery's attempt; record it before the handler runs."""
        store = self.attempts
        spent = await store.read(run.seq) if store is not None else None
        if store is None or spent is None:  # no store: the server's count stands in
            run.attempt = run.deliveries
            return
        run.stored = spent
        if self.limits.last_attempt(spent):
            run.attempt, run.exhausted = spent, True
            return
        run.attempt = spent + 1  # no entry: never started (given back, or lost unstarted)
        if await store.write(run.seq, run.attempt):
            run.stored = run.attempt

    async def _finish(self, msg: Msg, decision: Decision, handler: Handler | None,
                      run: _Run) -> None:
        store = self.attempts
        if store is not None and (run.stored != run.attempt if decision.action == "nak"
                                  else run.stored):
            seq = run.seq or reply_meta(msg.reply)[1]
            if not seq:
                pass
            elif decision.action == "nak":
                await store.write(seq, run.attempt)  # before the nak: it is read next
            else:
                await store.forget(seq)
        await self.settle(msg, decision, handler)

    async def give_back(self, msg: Msg, handler: Handler | None = None,
                        run: _Run | None = None, *, started: bool = False) -> Decision:
        """Return a message that did not finish a run because serving stops.

        Uncounted (an attempt recorded for this run is taken back) and nak'ed for immediate
        redelivery; on the server's last delivery, where a nak would make the server give up
        silently, it is termed and dead-lettered with the reason instead.
        """
        if run is None:
            run = _Run(*reply_meta(msg.reply)[1:])
            run.attempt = 0
        store = self.attempts
        if store is not None and run.seq and run.stored and run.stored == run.attempt:
            if await store.write(run.seq, run.attempt - 1):
                run.stored = run.attempt - 1
            run.attempt -= 1
        decision = decide("unstarted", attempt=run.attempt, deliveries=run.deliveries,
                          limits=self.limits)
        if decision.action == "term":
            error = RuntimeError(decision.reason)
            stage: Stage = "business" if started else "pre-process"
            decision = await self._failed(msg, handler, stage, error, run, "unstarted")
            if store is not None and run.stored:
                await store.forget(run.seq)
        await self.settle(msg, decision, handler)
        return decision

    async def _unrouted(self, msg: Msg) -> Decision:
        if self.skip_unrouted:  # not ours: the consumer takes the whole stream
            self.skipped += 1
            await self.settle(msg, _ACK)
            return _ACK
        error = NoRouteError(f"no route of {self.owner} handles subject {msg.subject!r}")
        run = _Run(*reply_meta(msg.reply)[1:])
        decision = await self._failed(msg, None, "pre-process", error, run)
        await self.settle(msg, decision)
        return decision

    async def publish_events(self, events: list[Any], msg: Msg | None = None) -> None:
        """Publish a handler's result events, waiting for the stream to store each one; they
        carry ``msg``'s correlation id and trace context (:mod:`amebus.correlation`)."""
        from amebus.publish import publish_many

        await publish_many(self.js, events,
                           headers=None if msg is None else correlation_headers(msg))

    async def _failed(self, msg: Msg, handler: Handler | None, stage: Stage,
                      error: BaseException, run: _Run, outcome: Outcome | None = None
                      ) -> Decision:
        stream, seq, deliveries = reply_meta(msg.reply)
        retryable = stage != "pre-process" and outcome not in ("exhausted", "unstarted")
        dead_letter = self.settings.dead_letter_subject is not None
        if outcome is None:
            outcome = "failed" if stage != "pre-process" else "invalid"
        text = f"{stage}: {one_line(error)}" if outcome == "invalid" else one_line(error)
        limits = self.limits
        decision = decide(outcome, attempt=run.attempt, deliveries=deliveries, limits=limits,
                          error=text, dead_letter=dead_letter)
        failure = Failure(stage=stage, error=error, subject=msg.subject, stream=stream,
                          stream_seq=seq, deliveries=deliveries,
                          route=handler.name if handler is not None else None,
                          retryable=retryable, decision=decision)
        if self.observer is not None:
            self.observer.failed(failure)
        try:
            chosen = self.tracer.trace(failure)
        except Exception:
            log.exception("the error tracer %r raised; keeping amebus's decision", self.tracer)
            chosen = None
        decision = chosen or decision
        subject = self.settings.dead_letter_subject
        if decision.action == "term" and decision.dead_letter and subject is not None:
            reason = decision.reason

            def copy_failed(exc: BaseException) -> Decision:
                return decide("copy-failed", attempt=run.attempt, deliveries=deliveries,
                              limits=limits, error=f"{reason}; the dead-letter copy failed "
                                                   f"too: {one_line(exc)}")

            instead = await publish_dead_letter(self.js, subject, msg, failure, decision,
                                                settings=self.settings, tracer=self.tracer,
                                                max_payload=getattr(self.nc, "max_payload", None),
                                                on_copy_failed=copy_failed)
            if instead is not None:
                return instead
            if handler is not None:
                handler.stats.dead_lettered += 1
        return decision

    async def settle(self, msg: Msg, decision: Decision, handler: Handler | None = None) -> None:
        """Send ``decision`` for ``msg`` (once: skipped if the handler settled it itself)."""
        if self.observer is not None:
            self.observer.settled(msg, decision, handler)
        if self.on_settled is not None:
            self.on_settled(msg)
        if not msg.reply or msg.is_acked:  # not JetStream, or the handler settled it itself
            return
        if decision.action == "term" and decision.reason:
            decision = attrs.evolve(decision, reason=one_line(decision.reason))
        if decision.action != "ack" or log.isEnabledFor(logging.DEBUG):
            log_settlement(log, msg, decision, handler, returned=self.stopping)
        if handler is not None:
            stats = handler.stats
            if decision.action == "ack":
                stats.acked += 1
            elif decision.action == "nak":
                stats.naked += 1
            else:
                stats.termed += 1
        try:
            await self.nc.publish(msg.reply, encode(decision))
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
