"""Direct delivery (``amebus._natsparse.deliver_directly``), against a real nats-server: the
parser gives a subscription's messages to a function itself, with what nats-py's own path
gives (subject, reply, data, headers, stats, order), reports a failing function and reads on,
and the guard leaves the subscription's queue in charge where it must."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from typing import Any

import nats
import nats.aio.client
import pytest
from _support import Space, eventually
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import _natsparse
from amebus.pull import Puller


class Queued:
    """Counts the messages ``Client._process_msg`` is given for one subscription id."""

    def __init__(self, nc: Client) -> None:
        self.sids: list[int] = []
        original = nc._process_msg

        async def counted(sid: int, *args: Any) -> None:
            self.sids.append(sid)
            await original(sid, *args)

        nc._process_msg = counted  # type: ignore[method-assign]


async def _subscribe(nc: Client, subject: str) -> tuple[Any, list[Msg]]:
    """A core subscription whose callback records what reaches it through its queue."""
    got: list[Msg] = []

    async def queued(msg: Msg) -> None:
        got.append(msg)

    sub = await nc.subscribe(subject, cb=queued)
    assert _natsparse.install_parser(nc)
    return sub, got


async def test_the_pull_inbox_is_delivered_directly(nc: Client, js: JetStreamContext,
                                                    space: Space) -> None:
    await js.add_stream(name=space.stream, subjects=[f"{space.prefix}.>"])
    sent = []
    for index in range(40):
        headers = {"Nats-Msg-Id": f"id-{index}", "X-Index": str(index)} if index % 2 else None
        subject = space.subject("job", str(index))
        data = json.dumps({"id": index}).encode()
        await js.publish(subject, data, headers=headers)
        sent.append((subject, data, headers))
    await js.add_consumer(space.stream, durable_name=space.durable, ack_policy="explicit")
    queued = Queued(nc)
    before = nc.stats["in_msgs"]
    puller = Puller(nc, space.stream, space.durable, batch=16, heartbeat=0.5)
    await puller.start()
    try:
        assert puller.direct
        got = []
        for _ in sent:
            msg = await asyncio.wait_for(puller.next(), 5)
            assert msg is not None
            got.append(msg)
            await msg.ack()
            puller.release(msg)
        await asyncio.sleep(1.2)  # idle heartbeats (statuses) arrive the same way
        assert puller.heard_at > 0
    finally:
        await puller.stop()
    assert [(m.subject, m.data) for m in got] == [(s, d) for s, d, _ in sent]  # stream order
    for msg, (_, _, headers) in zip(got, sent, strict=True):
        assert msg.headers == headers
        assert msg.reply.startswith(f"$JS.ACK.{space.stream}.{space.durable}.1.")
        assert msg._client is nc and msg.metadata.sequence.stream == got.index(msg) + 1
    assert queued.sids.count(puller._sub._id) == 0  # none went through _process_msg
    assert nc.stats["in_msgs"] - before >= len(sent)
    assert puller._sub.delivered >= len(sent)  # sub._received, as nats-py counts it
    info = await js.consumer_info(space.stream, space.durable)
    assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_headers_read_as_nats_py_reads_them(nc: Client, nats_url: str,
                                                  space: Space) -> None:
    """A second client, on nats-py's own path, is the oracle; a block the same as the last
    one's is parsed once but every message gets its own dict."""
    sub, _ = await _subscribe(nc, space.subject("h"))
    direct: list[tuple[Msg, int]] = []
    assert _natsparse.deliver_directly(nc, sub, lambda msg, size: direct.append((msg, size)))
    other = await nats.connect(nats_url)
    try:
        plain: list[Msg] = []

        async def queued(msg: Msg) -> None:
            plain.append(msg)

        await other.subscribe(space.subject("h"), cb=queued)
        await other.flush()
        blocks = [{"Nats-Pin-Id": "p1"}, {"Nats-Pin-Id": "p1"}, {"Nats-Pin-Id": "p1"},
                  {"A": "b", "C": "d é"}, None, {"A": "b", "C": "d é"}, {"Nats-Pin-Id": "p2"}]
        for headers in blocks:
            await nc.publish(space.subject("h"), b"x", headers=headers)
        await eventually(lambda: len(direct) == len(plain) == len(blocks))
    finally:
        await other.close()
    assert [m.headers for m, _ in direct] == [m.headers for m in plain]
    for (_, size), headers in zip(direct, blocks, strict=True):
        raw = b"" if headers is None else b"NATS/1.0\r\n" + b"".join(
            f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
        assert size == len(raw)
    direct[1][0].headers["Nats-Pin-Id"] = "changed"  # type: ignore[index]
    assert direct[2][0].headers == {"Nats-Pin-Id": "p1"}  # a dict of its own


async def test_order_is_kept_across_an_awaited_message(nc: Client, space: Space) -> None:
    sub, queued = await _subscribe(nc, space.subject("core"))
    seen: list[bytes] = []

    async def slow(msg: Msg) -> None:
        await asyncio.sleep(0.05)
        seen.append(msg.data)

    def on_msg(msg: Msg, header_bytes: int) -> Awaitable[None] | None:
        if msg.data == b"1":
            return slow(msg)  # the parser awaits it before the next message
        seen.append(msg.data)
        return None

    assert _natsparse.deliver_directly(nc, sub, on_msg)
    for index in range(5):
        await nc.publish(space.subject("core"), str(index).encode())
    await nc.flush()
    await eventually(lambda: len(seen) == 5)
    assert seen == [b"0", b"1", b"2", b"3", b"4"] and queued == []


async def test_a_failing_function_is_reported_and_reading_goes_on(
        nats_url: str, space: Space) -> None:
    errors: list[BaseException] = []

    async def error_cb(error: Exception) -> None:
        errors.append(error)

    nc = await nats.connect(nats_url, error_cb=error_cb)
    try:
        sub, _ = await _subscribe(nc, space.subject("core"))
        seen: list[bytes] = []

        def on_msg(msg: Msg, header_bytes: int) -> None:
            if msg.data == b"boom":
                raise RuntimeError("boom")
            seen.append(msg.data)

        assert _natsparse.deliver_directly(nc, sub, on_msg)
        for data in (b"a", b"boom", b"b"):
            await nc.publish(space.subject("core"), data)
        await nc.flush()
        await eventually(lambda: seen == [b"a", b"b"])
        assert [str(e) for e in errors] == ["boom"]
        assert nc.is_connected and nc.stats["reconnects"] == 0
    finally:
        await nc.close()


async def test_stopped_delivery_goes_through_the_queue_again(nc: Client, space: Space) -> None:
    sub, queued = await _subscribe(nc, space.subject("core"))
    direct: list[bytes] = []
    assert _natsparse.deliver_directly(nc, sub, lambda msg, _: direct.append(msg.data))
    await nc.publish(space.subject("core"), b"a")
    await eventually(lambda: direct == [b"a"])
    _natsparse.stop_delivering(nc, sub)
    await nc.publish(space.subject("core"), b"b")
    await eventually(lambda: [m.data for m in queued] == [b"b"])
    assert direct == [b"a"]
    await sub.unsubscribe()
    _natsparse.stop_delivering(nc, sub)  # twice, and after unsubscribing: harmless


async def test_an_unsubscribed_subscription_drops_as_nats_py_does(nc: Client,
                                                                   space: Space) -> None:
    sub, _ = await _subscribe(nc, space.subject("core"))
    direct: list[bytes] = []
    assert _natsparse.deliver_directly(nc, sub, lambda msg, _: direct.append(msg.data))
    nc._subs.pop(sub._id)  # what unsubscribe() does first; the server may still send
    await nc._ps.parse(b"MSG %s %d 1\r\nx\r\n" % (space.subject("core").encode(), sub._id))
    assert direct == []


class TestGuard:
    async def test_an_untested_nats_py_keeps_the_queue(self, nc: Client, space: Space,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        sub, queued = await _subscribe(nc, space.subject("core"))
        monkeypatch.setattr(nats.aio.client, "__version__", "2.99.0")
        assert not _natsparse.deliver_directly(nc, sub, lambda msg, _: None)
        await nc.publish(space.subject("core"), b"a")
        await eventually(lambda: len(queued) == 1)

    async def test_a_subscription_with_a_limit_or_jetstream_context_keeps_the_queue(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        limited = await nc.subscribe(space.subject("a"), max_msgs=3)
        assert _natsparse.install_parser(nc)
        assert not _natsparse.deliver_directly(nc, limited, lambda msg, _: None)
        await js.add_stream(name=space.stream, subjects=[f"{space.prefix}.>"])
        push = await js.subscribe(space.subject("b"), cb=lambda msg: asyncio.sleep(0))
        assert not _natsparse.deliver_directly(nc, push._sub, lambda msg, _: None)

    async def test_a_client_without_amebus_parser_keeps_the_queue(self, nc: Client,
                                                                  space: Space) -> None:
        sub = await nc.subscribe(space.subject("a"))
        assert type(nc._ps) is not _natsparse._SafeParser
        assert not _natsparse.deliver_directly(nc, sub, lambda msg, _: None)
