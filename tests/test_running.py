"""``async with service.running(js):``: serving starts before the block, stops gracefully
after it, and a failure of serve() is raised, not lost in a background task."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from _support import Space, settled
from nats.js import JetStreamContext

from amebus import ConfigurationError, Route, Service


def slow_service(space: Space, started: asyncio.Event, release: asyncio.Event,
                 done: list[bytes]) -> Service:
    async def handle(payload: bytes) -> None:
        started.set()
        await release.wait()
        done.append(payload)

    cls: Any = type("Slow", (Service,), {"slow": Route(space.subject("slow"), handle)})
    return cls()  # type: ignore[no-any-return]


async def test_ready_inside_and_graceful_on_exit(js: JetStreamContext, space: Space) -> None:
    started, release, done = asyncio.Event(), asyncio.Event(), []
    service = slow_service(space, started, release, done)
    async with service.running(js, **space.options(shutdown_timeout=10)) as task:
        info = await js.consumer_info(space.stream, space.durable)  # bound before the block
        assert info.name == space.durable and not task.done()
        ack = await js.publish(space.subject("slow"), b"m1")
        await started.wait()
        asyncio.get_running_loop().call_later(0.2, release.set)  # finishes while stopping
    assert task.done() and done == [b"m1"]  # the exit waited for the running handler
    info = await settled(js, space, ack.seq)
    assert info.num_redelivered == 0


async def test_a_serve_failure_before_ready_is_raised(js: JetStreamContext,
                                                      space: Space) -> None:
    service = slow_service(space, asyncio.Event(), asyncio.Event(), [])
    with pytest.raises(ConfigurationError, match="does not exist"):
        async with service.running(js, **space.options(stream_subjects=None)):
            pytest.fail("the block must not run")


async def test_an_error_in_the_block_stops_serving(js: JetStreamContext, space: Space) -> None:
    service = slow_service(space, asyncio.Event(), asyncio.Event(), [])
    with pytest.raises(LookupError, match="from the block"):
        async with service.running(js, **space.options()) as task:
            raise LookupError("from the block")
    assert task.cancelled() or task.done()
    async with service.running(js, **space.options()):  # the instance may serve again
        pass
