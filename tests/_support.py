"""Helpers shared by the tests that serve against a real nats-server: a test's own stream,
serving in a task, polling until a condition holds, and waiting for a consumer to settle."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from amebus import Service

__all__ = ["Space", "eventually", "serving", "settled"]


@attrs.frozen
class Space:
    """A stream, a durable and a subject prefix of one test's own on the shared server."""

    stream: str
    durable: str
    prefix: str

    def subject(self, *tokens: str) -> str:
        return ".".join((self.prefix, *tokens))

    def options(self, **overrides: Any) -> dict[str, Any]:
        """serve() keywords binding this space, with short test timings unless overridden."""
        return {"stream": self.stream, "durable": self.durable,
                "stream_subjects": (f"{self.prefix}.>",), "ack_wait": 2.0, "max_deliver": 3,
                "backoff": (0.1,), "shutdown_timeout": 1.0, **overrides}


@contextlib.asynccontextmanager
async def serving(service: Service, js: JetStreamContext | Client, *, ready_within: float = 10,
                  reraise: bool = True, **options: Any) -> AsyncIterator[asyncio.Task[None]]:
    """Serve in a task until the block ends; the block starts once ``ready`` is set.

    At the end a running task is cancelled. A task that ended by itself raises what serve
    raised, unless ``reraise=False``: the test inspects the task itself.
    """
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve(js, ready=ready, **options))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=ready_within, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task.done():
        task.result()  # raises what serve raised
    assert ready.is_set(), f"serve() did not become ready within {ready_within:g} s"
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif reraise and not task.cancelled():
            task.result()


async def eventually(check: Callable[[], Any], timeout: float = 5.0,
                     what: str = "condition") -> None:
    """Poll ``check`` (sync or async) until it is true."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def settled(js: JetStreamContext, space: Space, last_seq: int | None = None,
                  timeout: float = 5.0) -> ConsumerInfo:
    """Wait until the consumer has nothing pending and nothing unacknowledged (and, given
    ``last_seq``, has delivered and settled everything up to that stream sequence)."""
    info: ConsumerInfo | None = None

    async def check() -> bool:
        nonlocal info
        info = await js.consumer_info(space.stream, space.durable)
        done = info.num_ack_pending == 0 and info.num_pending == 0
        if last_seq is None:
            return done
        return done and info.ack_floor is not None and info.ack_floor.stream_seq >= last_seq

    what = "consumer settled" if last_seq is None else (
        f"consumer settled up to stream seq {last_seq}")
    await eventually(check, timeout, what=what)
    assert info is not None
    return info
