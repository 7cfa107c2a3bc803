"""The bind-time warning for ``server_filter = "routes"`` over a stream of many subjects.

On a real server: a stream holding more than SLOW_FILTER_SUBJECTS distinct subjects warns
once when the consumer gets several exact filters; fewer subjects, one filter, or "auto"
stay silent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from _support import Space, serving
from nats.aio.client import Client
from nats.js import JetStreamContext

import amebus
from amebus.slowfilter import SLOW_FILTER_SUBJECTS, distinct_subjects

LOGGER = "amebus.slowfilter"


def make_service(space: Space, **config: Any) -> amebus.Service:
    async def handle(payload: bytes) -> None:
        pass

    cls = type("Wide", (amebus.Service,), {
        "paid": amebus.Route(space.subject("paid", "*"), handle),
        "shipped": amebus.Route(space.subject("shipped", "*"), handle),
        "__module__": __name__, **config})
    return cls()  # type: ignore[no-any-return]


async def fill(js: JetStreamContext, space: Space, subjects: int) -> None:
    """A stream on ``<prefix>.>`` with ``subjects`` distinct subjects, one message each."""
    await js.add_stream(name=space.stream, subjects=[space.subject(">")])
    acks = [await js.publish_async(space.subject("other", str(i)), b"x", wait_stall=5)
            for i in range(subjects)]
    await asyncio.gather(*acks)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == LOGGER and r.levelno == logging.WARNING]


async def bind(js: JetStreamContext, space: Space, caplog: pytest.LogCaptureFixture,
               **config: Any) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        async with serving(make_service(space, **config), js, **space.options()):
            pass
    return warnings(caplog)


async def test_routes_over_many_subjects_warns_once(js: JetStreamContext, space: Space,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    await fill(js, space, SLOW_FILTER_SUBJECTS + 1)
    found = await bind(js, space, caplog, server_filter="routes")
    assert len(found) == 1, found
    assert (f"Wide: server_filter = 'routes' gives the consumer 2 filter subjects on stream "
            f"{space.stream}, which holds {SLOW_FILTER_SUBJECTS + 1:,} distinct subjects"
            ) in found[0]
    assert "29x slower, 0.035x the rate of server_filter = 'auto'" in found[0]
    assert "Set server_filter = 'auto'" in found[0]
    info = await js.consumer_info(space.stream, space.durable)
    assert sorted(info.config.filter_subjects or []) == [space.subject("paid", "*"),
                                                         space.subject("shipped", "*")]


async def test_routes_at_the_threshold_is_silent(js: JetStreamContext, space: Space,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    await fill(js, space, SLOW_FILTER_SUBJECTS)
    assert await bind(js, space, caplog, server_filter="routes") == []


async def test_auto_is_silent(js: JetStreamContext, space: Space,
                              caplog: pytest.LogCaptureFixture) -> None:
    await fill(js, space, SLOW_FILTER_SUBJECTS + 1)
    assert await bind(js, space, caplog, server_filter="auto") == []
    info = await js.consumer_info(space.stream, space.durable)
    assert not info.config.filter_subjects  # auto took the whole stream: nothing to warn of


async def test_one_filter_subject_is_silent(js: JetStreamContext, space: Space,
                                            caplog: pytest.LogCaptureFixture) -> None:
    await fill(js, space, SLOW_FILTER_SUBJECTS + 1)

    async def handle(payload: bytes) -> None:
        pass

    service = type("Narrow", (amebus.Service,), {
        "paid": amebus.Route(space.subject("paid", "*"), handle), "__module__": __name__,
        "server_filter": "routes"})()
    caplog.clear()
    async with serving(service, js, **space.options()):
        pass
    assert warnings(caplog) == []


async def test_the_count_is_the_servers(nc: Client, js: JetStreamContext, space: Space) -> None:
    await fill(js, space, 7)
    await js.publish(space.subject("other", "0"), b"again")  # a second message, same subject
    assert await distinct_subjects(nc, "$JS.API", space.stream) == 7
    assert await distinct_subjects(nc, "$JS.API", space.stream + "_MISSING") is None
