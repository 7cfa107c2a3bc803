"""The workers' slots and the one watchdog loop over them: it sends in-progress signals for
long handlers and cancels those past their deadline (no timer per message).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["Slot", "watch"]


@attrs.define(eq=False)
class Slot:
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


async def watch(slots: list[Slot], *, ack_wait: float, timeouts: Iterable[float | None],
                progress: Callable[[Msg], Awaitable[None]],
                on_tick: Callable[[float], Awaitable[None]]) -> None:
    """Watch ``slots`` until cancelled: ``progress(msg)`` every third of ``ack_wait`` for a
    handler still running, cancel one past its deadline, ``on_tick(elapsed)`` every tick."""
    progress_every = ack_wait / 3
    tick = min(1.0, progress_every / 2, *(t / 4 for t in timeouts if t is not None))
    last = time.monotonic()
    while True:
        await asyncio.sleep(tick)
        now = time.monotonic()
        for slot in slots:
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
                await progress(msg)
        await on_tick(now - last)
        last = now
