"""``Service.running(js)``: serve in a background task for the span of an ``async with`` block.

For frameworks with a lifespan (Starlette, FastAPI, aiohttp's cleanup contexts): the block
starts once the consumer is bound and pulling, and leaving it stops serving gracefully.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

    from amebus.service import Service

__all__ = ["running"]


@contextlib.asynccontextmanager
async def running(service: Service, js: JetStreamContext | Client, *,
                  ready_timeout: float = 30.0, **overrides: Any
                  ) -> AsyncIterator[asyncio.Task[None]]:
    """Start ``service.serve(js, **overrides)`` in a task, wait until it is ready, yield the
    task; on exit cancel it (running handlers get ``shutdown_timeout`` to finish) and wait.

    Raises:
        TimeoutError: not ready within ``ready_timeout`` seconds (serving is stopped).
        Exception: what ``serve`` raised, if it failed before it was ready or while the
            block ran (``ConfigurationError`` for a missing stream, ...).
    """
    ready = asyncio.Event()
    name = f"amebus-serve-{type(service).__name__}"
    task = asyncio.create_task(service.serve(js, ready=ready, **overrides), name=name)
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({task, waiter}, timeout=ready_timeout,
                           return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # cancelled while starting: stop serving too
        await _stop(task)
        raise
    finally:
        waiter.cancel()
    if task.done():
        task.result()  # raises what serve raised
        msg = f"{type(service).__name__}.serve() returned before it was ready"
        raise RuntimeError(msg)
    if not ready.is_set():
        await _stop(task)
        msg = (f"{type(service).__name__} was not serving after {ready_timeout:g}s (binding the "
               f"consumer took too long); is the server reachable, with JetStream enabled?")
        raise TimeoutError(msg)
    try:
        yield task
    finally:
        failed = task.done() and not task.cancelled() and task.exception() is not None
        await _stop(task)
        if failed:
            task.result()  # serving ended with an error while the block ran: raise it


async def _stop(task: asyncio.Task[None]) -> None:
    if not task.done():
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait({task})
