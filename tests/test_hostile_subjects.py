"""Hostile subjects against a real nats-server: stored, delivered, termed, and serving goes on.

Any client that writes bytes can publish a subject that is not UTF-8, or one with a vertical
tab (the Node.js client allows it); nats-server stores both. nats-py 2.16's parser kills its
reader on the first and drops the connection on the second, on every redelivery. amebus
installs its own parser (``amebus._natsio``): the message reaches the consumer, no route
takes it (not even a wildcard), and it is termed by its reply subject with a reason; the
good messages around it are handled, over the same connection.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from _support import Space, eventually, serving
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import Route, Service
from amebus.testing import NatsServer


async def raw_publish(server: NatsServer, subjects: list[bytes], *,
                      headers: bool = False) -> None:
    """Publish ``subjects`` (any bytes) through the plain protocol over a socket; with
    ``headers``, as ``HPUB`` (delivered as ``HMSG``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        header = b"NATS/1.0\r\nX-Test: 1\r\n\r\n"
        for subject in subjects:
            if headers:
                writer.write(b"HPUB %s %d %d\r\n%shi\r\n" % (
                    subject, len(header), len(header) + 2, header))
            else:
                writer.write(b"PUB " + subject + b" 2\r\nhi\r\n")
        writer.write(b"PING\r\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 5)
        assert line == b"PONG\r\n", line
    finally:
        writer.close()


@pytest.fixture
async def terms(nc: Client, space: Space) -> AsyncIterator[list[dict[str, object]]]:
    """The server's MSG_TERMINATED advisories for the test's durable."""
    seen: list[dict[str, object]] = []

    async def on_advisory(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await nc.subscribe(
        f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{space.stream}.{space.durable}",
        cb=on_advisory)
    yield seen
    await sub.unsubscribe()


@pytest.mark.parametrize("headers", [False, True], ids=["MSG", "HMSG"])
async def test_hostile_subjects_are_termed_and_serving_goes_on(
        nats_server: NatsServer, nc: Client, js: JetStreamContext, space: Space,
        terms: list[dict[str, object]], headers: bool) -> None:
    handled: list[str] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg.subject)

    class Hostile(Service):
        everything = Route(space.subject(">"), handle)

    service = Hostile()
    prefix = space.prefix.encode()
    bad = [prefix + b".bad\xff\xfe", prefix + b".tab\x0bbed", prefix + b".form\x0cfeed"]
    async with serving(service, js, **space.options()):
        await raw_publish(nats_server, [prefix + b".good1", *bad, prefix + b".good2"],
                          headers=headers)
        await eventually(lambda: len(handled) == 2 and len(terms) == 3, timeout=10,
                         what="2 good messages handled and 3 hostile ones termed")
        await js.publish(space.subject("after"), b"ok")  # later traffic is still handled
        await eventually(lambda: len(handled) == 3, what="a message after the hostile ones")
        stats = service.stats
    assert handled == [space.subject("good1"), space.subject("good2"), space.subject("after")]
    assert sorted(int(t["stream_seq"]) for t in terms) == [2, 3, 4]  # type: ignore[call-overload]
    for term in terms:
        assert "no route" in str(term.get("reason")), term
    total = stats.total()
    assert (total.acked, total.termed) == (3, 0)  # the hostile ones are no route's
    assert stats.disconnects == 0, "the hostile subjects dropped the connection"
    assert nc.is_connected
    info = await js.consumer_info(space.stream, space.durable)
    assert (info.num_pending, info.num_ack_pending) == (0, 0)


async def _dead_lettered(nats_server: NatsServer, js: JetStreamContext, space: Space,
                         subject: bytes) -> None:
    handled: list[str] = []

    async def handle(msg: Msg) -> None:
        handled.append(msg.subject)

    class Hostile(Service):
        everything = Route(space.subject("in", ">"), handle)

    dead = space.subject("dead")
    async with serving(Hostile(), js, **space.options(dead_letter_subject=dead)):
        await raw_publish(nats_server, [subject, space.prefix.encode() + b".in.good"])
        await eventually(lambda: handled == [space.subject("in", "good")],
                         what="the good message after the hostile one")

        async def copied() -> bool:
            info = await js.stream_info(space.stream, subjects_filter=dead)
            return (info.state.subjects or {}).get(dead) == 1

        await eventually(copied, what="the dead-letter copy")
    info = await js.consumer_info(space.stream, space.durable)
    assert info.num_ack_pending == 0


async def test_a_subject_with_a_vertical_tab_is_dead_lettered(
        nats_server: NatsServer, js: JetStreamContext, space: Space) -> None:
    await _dead_lettered(nats_server, js, space, space.prefix.encode() + b".in.tab\x0bbed")


async def test_a_subject_that_is_not_utf8_is_dead_lettered(
        nats_server: NatsServer, js: JetStreamContext, space: Space) -> None:
    await _dead_lettered(nats_server, js, space, space.prefix.encode() + b".in.bad\xff")
