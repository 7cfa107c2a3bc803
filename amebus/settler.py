"""Settling a delivery after its run: count its attempt, trace a failure, copy a dead letter,
send the decision once.

:class:`Settler` is the half of :class:`~amebus.consumer.JetStreamConsumer` that comes after
(or instead of) a handler: the decision itself is :func:`amebus.settlement.decide`, the bytes
on the wire :func:`amebus.settlement.encode`; this class does the I/O around them (the attempt
store, the error tracer and observer, the dead-letter copy, the reply), and keeps the messages
parked unstarted (waiting for their key, or collected into a batch) until they start or are
given back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from amebus._natsack import Replies
from amebus.deadletter import one_line, publish_dead_letter
from amebus.errors import AttemptsExhaustedError, Nak, NoRouteError, Term
from amebus.settlement import PROGRESS, Limits, Outcome, Settings, decide, encode, reply_meta
from amebus.telemetry.logs import log_settlement
from amebus.tracing import Decision, ErrorTracer, Failure, LoggingTracer, Stage

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.attempts import Attempts
    from amebus.handlers import Handler
    from amebus.telemetry.observer import Observer

__all__ = ["ACK", "FIRST", "Run", "Settler"]

# Settlement lines are logged as amebus.consumer, the logger name docs/observability.md gives.
log = logging.getLogger("amebus.consumer")

ACK = Decision.ack()
ACK_REPLY = encode(ACK)  # b"+ACK"


@attrs.define
class Run:
    """One delivery's attempt bookkeeping: ``attempt`` is its handler attempt (1 the first
    time), ``stored`` what the attempt store holds for it (0: nothing)."""

    seq: int
    deliveries: int
    attempt: int = 1
    stored: int = 0
    exhausted: bool = False


FIRST = Run(0, 1)
"""Every first delivery's bookkeeping (shared: nothing mutates a run with nothing stored)."""


class Settler:
    """Settles messages exactly once for a consumer (the constructor arguments of
    :class:`~amebus.consumer.JetStreamConsumer`)."""

    def __init__(self, nc: Client, error_tracer: ErrorTracer | None, settings: Settings, *,
                 owner: str, skip_unrouted: bool = False, limits: Limits | None = None,
                 attempts: Attempts | None = None, observer: Observer | None = None,
                 on_settled: Callable[[Msg], None] | None = None,
                 parked: dict[str, Msg] | None = None) -> None:
        self.settings = settings
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.tracer = error_tracer or LoggingTracer()
        self.owner = owner
        self.stopping = False
        self.skipped = 0
        self.skip_unrouted = skip_unrouted
        """Ack (not term) messages no route handles: the consumer is unfiltered."""
        self.limits = limits or settings.limits()
        """The limits settlement decides against (``serve`` gives the server's actual one)."""
        self.attempts = attempts
        """Where handler attempts are counted (None: by the server's deliveries)."""
        self.observer = observer
        """Told where each delivery starts, ends and is settled (None: nothing is called)."""
        self.on_settled = on_settled
        """Called with every message :meth:`settle` is given (the pull engine's byte budget)."""
        self.replies = Replies(nc)
        """Writes replies into the client's buffer where it can (else ``nc.publish``)."""
        self.parked: dict[str, Msg] = {} if parked is None else parked
        """Messages taken and held back unstarted (waiting for their key, or collected into a
        batch), by reply subject: kept alive by in-progress signals, given back at shutdown."""

    async def begin(self, run: Run) -> None:
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

    async def finish(self, msg: Msg, decision: Decision, handler: Handler | None,
                     run: Run) -> None:
        """Record the attempt a nak leaves (forget it otherwise), then settle."""
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
                        run: Run | None = None, *, started: bool = False) -> Decision:
        """Return a message that did not finish a run because serving stops.

        Uncounted (an attempt recorded for this run is taken back) and nak'ed for immediate
        redelivery; on the server's last delivery, where a nak would make the server give up
        silently, it is termed and dead-lettered with the reason instead.
        """
        if run is None:
            run = Run(*reply_meta(msg.reply)[1:])
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
            decision = await self.failed(msg, handler, stage, error, run, "unstarted")
            if store is not None and run.stored:
                await store.forget(run.seq)
        await self.settle(msg, decision, handler)
        return decision

    def park(self, msg: Msg) -> None:
        """Hold ``msg`` back unstarted: it counts against the pull window, gets in-progress
        signals while it waits and is given back (uncounted) if serving stops first."""
        self.parked[msg.reply] = msg

    def unpark(self, msg: Msg) -> None:
        """``msg`` starts now (or is settled): it is no longer parked."""
        self.parked.pop(msg.reply, None)

    async def give_back_parked(self) -> None:
        """Give back every parked message (serving stops): nak'ed for redelivery, uncounted,
        in the order they were parked."""
        while self.parked:
            await self.give_back(self.parked.pop(next(iter(self.parked))))

    async def unrouted(self, msg: Msg) -> Decision:
        """Settle a message no route handles: acked when the consumer takes the whole stream,
        else termed (and dead-lettered) as ``NoRouteError``."""
        if self.skip_unrouted:  # not ours: the consumer takes the whole stream
            self.skipped += 1
            await self.settle(msg, ACK)
            return ACK
        error = NoRouteError(f"no route of {self.owner} handles subject {msg.subject!r}")
        run = Run(*reply_meta(msg.reply)[1:])
        decision = await self.failed(msg, None, "pre-process", error, run)
        await self.settle(msg, decision)
        return decision

    async def failed(self, msg: Msg, handler: Handler | None, stage: Stage,
                     error: BaseException, run: Run, outcome: Outcome | None = None
                     ) -> Decision:
        """Decide a failure, tell the observer and tracer, and copy a dead letter."""
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
                instead = decide("copy-failed", attempt=run.attempt, deliveries=deliveries,
                                 limits=limits, error=f"{reason}; the dead-letter copy failed "
                                                      f"too: {one_line(exc)}")
                if self.observer is not None:  # telemetry sees the refused copy too
                    self.observer.failed(attrs.evolve(failure, stage="post-process",
                                                      error=exc, decision=instead))
                return instead

            instead = await publish_dead_letter(self.js, subject, msg, failure, decision,
                                                settings=self.settings, tracer=self.tracer,
                                                max_payload=getattr(self.nc, "max_payload", None),
                                                on_copy_failed=copy_failed)
            if instead is not None:
                return instead
            if handler is not None:
                handler.stats.dead_lettered += 1
        return decision

    async def exhausted(self, msg: Msg, handler: Handler, run: Run) -> Decision:
        """Settle a redelivery whose attempts are spent, without running its handler."""
        spent = AttemptsExhaustedError(f"the handler failed or crashed on {run.attempt} attempts")
        decision = await self.failed(msg, handler, "business", spent, run, "exhausted")
        await self.finish(msg, decision, handler, run)
        return decision

    async def signalled(self, msg: Msg, handler: Handler, stage: Stage, run: Run,
                        signal: Nak | Term) -> Decision:
        """The decision for a ``Nak`` or ``Term`` a handler raised (or a batch handler
        returned for one of its messages)."""
        limits = self.limits
        if isinstance(signal, Term):
            return decide("term", attempt=run.attempt, deliveries=run.deliveries,
                          limits=limits, error=signal.reason)
        if limits.last_attempt(run.attempt) or limits.last_delivery(run.deliveries):
            return await self.failed(msg, handler, stage, signal, run, "nak")
        try:  # Nak checks its delay; one changed after raising is a handler failure
            return decide("nak", attempt=run.attempt, deliveries=run.deliveries,
                          limits=limits, delay=signal.delay)
        except (TypeError, ValueError) as bad:
            return await self.failed(msg, handler, stage, bad, run)

    async def settle(self, msg: Msg, decision: Decision, handler: Handler | None = None) -> None:
        """Send ``decision`` for ``msg`` (once: skipped if the handler settled it itself)."""
        if self.observer is not None:
            self.observer.settled(msg, decision, handler)
        if self.on_settled is not None:
            self.on_settled(msg)
        if not msg.reply or msg.is_acked:  # not JetStream, or the handler settled it itself
            return
        if decision.action == "ack":  # the common case, in fewer steps
            if log.isEnabledFor(logging.DEBUG):
                log_settlement(log, msg, decision, handler, returned=self.stopping)
            if handler is not None:
                handler.stats.acked += 1
            data = ACK_REPLY
        else:
            if decision.action == "term" and decision.reason:
                decision = attrs.evolve(decision, reason=one_line(decision.reason))
            log_settlement(log, msg, decision, handler, returned=self.stopping)
            if handler is not None:
                handler.stats.count(decision)
            data = encode(decision)
        try:
            # Stopping: give-backs go the old way, kicking the flusher now (one turn sooner).
            if self.stopping or not self.replies.write(msg.reply, data):
                await self.nc.publish(msg.reply, data)
        except Exception as exc:  # the server redelivers after ack_wait: nothing is lost
            log.warning("could not settle %r (%s): %r", msg.subject, decision.action, exc)

    async def progress(self, msg: Msg) -> None:
        """Send the in-progress signal (``+WPI``) for ``msg``: the server restarts its
        ack_wait. A failure is ignored (the next tick sends it again)."""
        try:
            if not self.replies.write(msg.reply, PROGRESS):
                await self.nc.publish(msg.reply, PROGRESS)
        except Exception as exc:
            log.debug("could not send in-progress for %r: %r", msg.subject, exc)
