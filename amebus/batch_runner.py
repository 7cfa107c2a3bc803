"""Serving batch routes (:mod:`amebus.batching`): the consumer's collectors and runners.

A message taken for a batch route is decoded and parked (it counts against the pull window and
gets in-progress signals); one runner per batch route, in a slot the watchdog watches, runs the
batch once it holds ``size`` messages or its oldest has waited ``wait`` seconds, then settles
each message once, by its own outcome. Batches of one route run one at a time, in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from amebus.batching import BatchCall, Outcome, outcomes_of
from amebus.errors import HandlerTimeoutError, Nak, Term
from amebus.settler import ACK, Run
from amebus.tracing import Decision
from amebus.watchdog import Slot

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.consumer import JetStreamConsumer
    from amebus.handlers import Handler

__all__ = ["COLLECTED", "Batches"]

COLLECTED = Decision.ack()
"""What ``JetStreamConsumer.handle`` returns for a message collected into a batch: it is
settled later, by the batch run (nothing is sent yet)."""

_NEVER = float("inf")


class _Collector:
    __slots__ = ("call", "handler", "items", "wake")

    def __init__(self, handler: Handler, call: BatchCall) -> None:
        self.handler, self.call = handler, call
        self.items: deque[tuple[Msg, Any, float]] = deque()  # (message, decoded, parked at)
        self.wake = asyncio.Event()


class Batches:
    """The batch routes of one consumer: their collectors and runner tasks."""

    def __init__(self, consumer: JetStreamConsumer) -> None:
        self.consumer = consumer
        self.collectors: dict[Handler, _Collector] = {}
        for handler in consumer.handlers.values():
            call = getattr(handler, "batch", None)  # a Bound of a batch route
            if isinstance(call, BatchCall):
                self.collectors[handler] = _Collector(handler, call)
        self.ended = 0

    def start(self) -> list[Slot]:
        """One runner task per batch route, each in a slot the watchdog watches."""
        self.ended = 0
        slots = []
        for collector in self.collectors.values():
            slot = Slot()
            slot.task = asyncio.create_task(self._runner(slot, collector),
                                            name=f"amebus-batch-{collector.handler.name}")
            slots.append(slot)
        return slots

    def end(self) -> None:
        """A worker found the messages ended: collected batches run at once, and the runners
        stop once every worker has ended and nothing is left."""
        self.ended += 1
        for collector in self.collectors.values():
            collector.wake.set()

    async def add(self, msg: Msg, handler: Handler) -> Decision:
        """Decode ``msg`` and park it for its batch; one that does not decode is settled on its
        own (as ``handle`` settles it) and never reaches the handler."""
        collector = self.collectors[handler]
        try:
            value = collector.call.decode(msg)
        except Exception as exc:
            consumer = self.consumer
            run = await consumer.run_of(msg)
            if run.exhausted:
                return await consumer.exhausted(msg, handler, run)
            decision = await consumer.failed(msg, handler, "pre-process", exc, run)
            await consumer.finish(msg, decision, handler, run)
            return decision
        self.consumer.park(msg)
        items = collector.items
        items.append((msg, value, time.monotonic()))
        if len(items) == 1 or len(items) >= collector.call.batch.size:
            collector.wake.set()
        return COLLECTED

    async def _runner(self, slot: Slot, collector: _Collector) -> None:
        while not self.consumer.stopping:
            try:
                items = await self._next(collector)
            except asyncio.CancelledError:  # serving stops: give the collected back, in order
                await self._give_back(collector)
                raise
            if items is None:
                return
            try:
                await self._run(slot, collector, items)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if slot.timed_out and not self.consumer.stopping and task is not None:
                    slot.forgive(task)  # a timeout that fired just after its handler finished
                    continue
                raise
            finally:
                slot.msg = None
        await self._give_back(collector)  # serving stops: what it collected since, in order

    async def _give_back(self, collector: _Collector) -> None:
        while collector.items:
            msg, _, _ = collector.items.popleft()
            self.consumer.unpark(msg)
            await self.consumer.give_back(msg, collector.handler)

    async def _next(self, collector: _Collector) -> list[tuple[Msg, Any, float]] | None:
        """The next batch: ``size`` messages, or fewer once the oldest waited ``wait``."""
        size, wait = collector.call.batch.size, collector.call.batch.wait
        items = collector.items
        while not self.consumer.stopping:
            due: float | None = None
            if items:
                due = items[0][2] + wait - time.monotonic()
                if len(items) >= size or due <= 0 or self.ended:
                    return [items.popleft() for _ in range(min(size, len(items)))]
            elif self.ended >= self.consumer.settings.concurrency:
                return None
            collector.wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(collector.wake.wait(), due)
        return None

    async def _run(self, slot: Slot, collector: _Collector,
                   items: list[tuple[Msg, Any, float]]) -> None:
        """Run one batch and settle each of its messages once."""
        consumer, handler = self.consumer, collector.handler
        slot.msg, slot.deadline = items[0][0], _NEVER  # running: shutdown waits for it
        slot.started, slot.timed_out, slot.cancels = time.monotonic(), False, 0
        batch: list[tuple[Msg, Any, Run]] = []
        try:
            for msg, value, _ in items:
                run = await consumer.run_of(msg)
                if run.exhausted:
                    consumer.unpark(msg)
                    await consumer.exhausted(msg, handler, run)
                else:
                    batch.append((msg, value, run))
        except asyncio.CancelledError:
            for msg, _, run in batch:
                consumer.unpark(msg)
                await consumer.give_back(msg, handler, run)
            raise  # the rest are still parked: given back by the consumer
        if not batch:
            return
        outcomes = await self._call(slot, collector, batch)
        for (msg, _, run), outcome in zip(batch, outcomes, strict=True):
            decision = await _decision(consumer, msg, handler, run, outcome)
            consumer.unpark(msg)
            await consumer.finish(msg, decision, handler, run)

    async def _call(self, slot: Slot, collector: _Collector, batch: list[tuple[Msg, Any, Run]]
                    ) -> list[Outcome | BaseException]:
        """Call the handler, timed like one message; its outcomes (a failure: for all)."""
        consumer, handler = self.consumer, collector.handler
        timeout = handler.timeout if handler.timeout is not None else consumer.settings.timeout
        start = time.monotonic()
        slot.deadline = start + timeout if timeout is not None else _NEVER
        observer = consumer.observer
        if observer is not None:
            for msg, _, _ in batch:
                observer.delivery_started(msg, handler)
        try:
            try:
                result = await collector.call.run([value for _, value, _ in batch])
                if slot.timed_out:  # it swallowed the watchdog's cancellation: still a timeout
                    raise asyncio.CancelledError
            finally:
                slot.deadline = _NEVER
                elapsed = time.monotonic() - start
                handler.stats.handled += len(batch)
                handler.stats.handler_seconds += elapsed
                if observer is not None:
                    for msg, _, _ in batch:
                        observer.handler_finished(msg, handler, elapsed)
            return list(outcomes_of(result, len(batch), handler.name))
        except asyncio.CancelledError as cancelled:
            task = asyncio.current_task()
            if not slot.timed_out and task is not None and not task.cancelling():
                return [cancelled] * len(batch)  # the handler raised it: an ordinary failure
            if not slot.timed_out:  # shutdown: give every message back uncounted, never ack
                for msg, _, run in batch:
                    consumer.unpark(msg)
                    await consumer.give_back(msg, handler, run, started=True)
                raise
            slot.forgive(task)
            error = HandlerTimeoutError(f"batch handler {handler.name} ran past its {timeout}s "
                                        f"timeout and was cancelled")
            return [error] * len(batch)
        except BaseException as exc:  # raised (Nak and Term too): the same for every message
            return [exc] * len(batch)


async def _decision(consumer: JetStreamConsumer, msg: Msg, handler: Handler, run: Run,
                    outcome: Outcome | BaseException) -> Decision:
    """One message's settlement by its outcome, as ``handle`` decides a raised one."""
    if outcome is None:
        return ACK
    if isinstance(outcome, Nak | Term):
        return await consumer.signalled(msg, handler, "business", run, outcome)
    return await consumer.failed(msg, handler, "business", outcome, run)
