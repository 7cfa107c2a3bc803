"""Settlement replies written into nats-py's buffer (``amebus._natsack``), against a real
nats-server: each reply reaches the server and does what it says, and the guard falls back to
``nc.publish`` where it must (an untested nats-py, a client that is reconnecting)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import nats
import nats.aio.client
import pytest
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig

from amebus import Decision, Route, Service, Term
from amebus._natsack import TESTED, Replies
from amebus.server import NatsServer
from amebus.settlement import Settings
from amebus.settler import Settler


class Counted:
    """Records the client's ``publish`` calls to reply subjects (patched on after the settler
    is made, so the guard, which refuses a patched client, still sees a plain one)."""

    def __init__(self, nc: Client) -> None:
        self.calls: list[tuple[str, bytes]] = []
        publish = nc.publish

        async def counted(subject: str, payload: bytes = b"", *args: Any, **kwargs: Any) -> None:
            if subject.startswith("$JS.ACK."):  # a reply (not a pull request)
                self.calls.append((subject, payload))
            await publish(subject, payload, *args, **kwargs)

        nc.publish = counted  # type: ignore[method-assign]


async def _messages(js: JetStreamContext, space: Space, count: int, *,
                    ack_wait: float = 30.0) -> tuple[Any, list[Msg]]:
    await js.add_stream(name=space.stream, subjects=[f"{space.prefix}.>"])
    for index in range(count):
        await js.publish(space.subject("job"), json.dumps({"id": index}).encode())
    sub = await js.pull_subscribe(space.subject("job"), space.durable, stream=space.stream,
                                  config=ConsumerConfig(ack_wait=ack_wait, max_deliver=5))
    msgs = await sub.fetch(count, timeout=5)
    assert len(msgs) == count
    return sub, msgs


def _settler(nc: Client) -> Settler:
    return Settler(nc, None, Settings(), owner="FastReplies")


async def _info(js: JetStreamContext, space: Space) -> Any:
    return await js.consumer_info(space.stream, space.durable)


async def _nothing_within(sub: Any, seconds: float) -> None:
    with pytest.raises(nats.errors.TimeoutError):
        await sub.fetch(1, timeout=seconds)


class TestFastPath:
    async def test_the_installed_nats_py_is_a_tested_one(self, nc: Client) -> None:
        """The suite runs on the versions the fast path claims (else it tests the fallback)."""
        assert nats.aio.client.__version__ in TESTED
        replies = Replies(nc)
        assert replies.fast, replies.refused

    async def test_acks_reach_the_server_without_a_publish_call(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        _, msgs = await _messages(js, space, 20)
        settler = _settler(nc)
        counted = Counted(nc)
        for msg in msgs:
            await settler.settle(msg, Decision.ack())
        assert counted.calls == []
        # All twenty wait in the buffer for one flush at the end of this loop turn...
        wire = sum(len(f"PUB {msg.reply} 4\r\n+ACK\r\n") for msg in msgs)
        assert nc.pending_data_size >= wire
        # ...a few loop turns later (no clock: a server PING would flush it too, in seconds).
        for _ in range(10):
            await asyncio.sleep(0)
        assert nc.pending_data_size == 0

        async def acked() -> bool:
            info = await _info(js, space)
            return bool(info.ack_floor.stream_seq == 20 and info.num_ack_pending == 0)

        await eventually(acked, what="ack floor at 20")
        assert (await _info(js, space)).num_redelivered == 0
        assert nc.stats["out_msgs"] >= 20

    async def test_a_nak_with_a_delay_is_redelivered_after_it_not_before(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        sub, (msg,) = await _messages(js, space, 1)
        settler = _settler(nc)
        counted = Counted(nc)
        delay = 1.5
        sent = time.monotonic()
        await settler.settle(msg, Decision.nak(delay))
        (again,) = await sub.fetch(1, timeout=10)
        waited = time.monotonic() - sent
        assert counted.calls == []
        assert again.metadata.num_delivered == 2 and again.data == msg.data
        assert waited >= delay  # the server held it back for the delay (a plain nak does not)
        await again.ack()

    async def test_a_nak_without_a_delay_is_redelivered(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        sub, (msg,) = await _messages(js, space, 1)
        await _settler(nc).settle(msg, Decision.nak(0.0))
        (again,) = await sub.fetch(1, timeout=5)
        assert again.metadata.num_delivered == 2
        await again.ack()

    async def test_a_term_is_not_redelivered_and_carries_its_reason(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        sub, (msg,) = await _messages(js, space, 1, ack_wait=1.0)
        advisories: list[dict[str, Any]] = []

        async def record(advisory: Msg) -> None:
            advisories.append(json.loads(advisory.data))

        advisory = await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{space.stream}.{space.durable}",
            cb=record)
        await nc.flush()
        settler = _settler(nc)
        counted = Counted(nc)
        await settler.settle(msg, Decision.term("order 7 is a duplicate"))
        await eventually(lambda: advisories, what="a MSG_TERMINATED advisory")
        assert advisories[0]["reason"] == "order 7 is a duplicate"
        assert counted.calls == []
        await _nothing_within(sub, 2.0)  # past ack_wait (1 s): a termed message stays settled
        info = await _info(js, space)
        assert (info.num_ack_pending, info.num_redelivered) == (0, 0)
        await advisory.unsubscribe()

    async def test_in_progress_extends_ack_wait(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        ack_wait = 1.0
        sub, (msg,) = await _messages(js, space, 1, ack_wait=ack_wait)
        settler = _settler(nc)
        counted = Counted(nc)

        async def keep_alive() -> None:
            while True:
                await settler.progress(msg)
                await asyncio.sleep(ack_wait / 5)

        alive = asyncio.create_task(keep_alive())
        try:
            await _nothing_within(sub, 3 * ack_wait)  # three ack_waits: not redelivered
        finally:
            alive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await alive
        assert counted.calls == []
        assert (await _info(js, space)).num_redelivered == 0
        await settler.settle(msg, Decision.ack())

        async def acked() -> bool:
            info = await _info(js, space)
            return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq == 1)

        await eventually(acked, what="acked after the in-progress signals")
        # Without them the same consumer redelivers it after ack_wait (the contrast):
        await js.publish(space.subject("job"), b"{}")
        (second,) = await sub.fetch(1, timeout=5)
        (again,) = await sub.fetch(1, timeout=5 + ack_wait)
        assert again.metadata.sequence.stream == second.metadata.sequence.stream
        await again.ack()


class TestServing:
    async def test_a_ledger_through_serve_settles_every_message_once(
            self, nc: Client, js: JetStreamContext, space: Space,
            monkeypatch: pytest.MonkeyPatch) -> None:
        """serve() with the fast path: acks, naks (a first failure) and terms (a Term) for
        300 messages at concurrency 8; every id is handled once successfully or termed."""
        written: list[bool] = []
        write = Replies.write

        def counted(self: Replies, reply: str, payload: bytes) -> bool:
            written.append(done := write(self, reply, payload))
            return done

        monkeypatch.setattr(Replies, "write", counted)
        ids = [str(i) for i in range(300)]
        handled: list[str] = []
        termed: list[str] = []
        seen: list[dict[str, Any]] = []

        async def advisory(msg: Msg) -> None:
            seen.append(json.loads(msg.data))

        sub = await nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{space.stream}.{space.durable}",
            cb=advisory)

        async def handle(msg: Msg) -> None:
            key = msg.subject.rsplit(".", 1)[1]
            if int(key) % 9 == 0:
                termed.append(key)
                raise Term(f"order {key} refused")
            if int(key) % 5 == 0 and msg.metadata.num_delivered == 1:
                raise RuntimeError(f"order {key}: first try fails")
            await asyncio.sleep(0)
            handled.append(key)

        class Ledger(Service):
            everything = Route(space.subject(">"), handle)

        async with serving(Ledger(), js, **space.options(concurrency=8, ack_wait=5.0)):
            for key in ids:
                await js.publish(space.subject("in", key), b"{}")
            await settled(js, space, len(ids), timeout=20)
        await eventually(lambda: len(seen) == len(termed), what="every term advised")
        await sub.unsubscribe()
        assert sorted(handled + termed, key=int) == ids  # each once: none lost, none twice
        assert sorted(termed, key=int) == [k for k in ids if int(k) % 9 == 0]
        failed_once = [k for k in ids if int(k) % 5 == 0 and int(k) % 9 != 0]
        assert written.count(True) == len(ids) + len(failed_once)  # acks + naks + terms
        assert False not in written


class TestGuard:
    async def test_an_untested_nats_py_uses_publish(
            self, nc: Client, js: JetStreamContext, space: Space,
            monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(nats.aio.client, "__version__", "2.99.0")
        sub, msgs = await _messages(js, space, 3)
        settler = _settler(nc)
        assert not settler.replies.fast
        assert "'2.99.0'" in (settler.replies.refused or "")
        counted = Counted(nc)
        for msg, decision in zip(msgs, (Decision.ack(), Decision.term("no"),
                                        Decision.nak(0.0)), strict=True):
            await settler.settle(msg, decision)
        await settler.progress(msgs[0])
        assert [payload for _, payload in counted.calls] == [b"+ACK", b"+TERM no", b"-NAK",
                                                             b"+WPI"]
        (again,) = await sub.fetch(1, timeout=5)  # the nak'ed one, through publish
        assert again.metadata.sequence.stream == 3
        await again.ack()

    async def test_a_client_with_its_own_publish_uses_it(self, nc: Client) -> None:
        async def publish(subject: str, payload: bytes = b"", **kwargs: Any) -> None:
            pass

        nc.publish = publish  # type: ignore[method-assign]
        replies = Replies(nc)
        assert not replies.fast and "not a plain" in (replies.refused or "")
        assert not replies.write("$JS.ACK.S.D.1.1.1.1.0", b"+ACK")

    async def test_a_reply_that_is_not_one_token_is_not_written(self, nc: Client) -> None:
        replies = Replies(nc)
        before = nc.pending_data_size
        for reply in ("a b", "a\r\nPUB x 0", "a\tb", ""):
            assert not replies.write(reply, b"+ACK")
        assert nc.pending_data_size == before

    async def test_once_stopping_settlements_use_publish(
            self, nc: Client, js: JetStreamContext, space: Space) -> None:
        """Give-backs at shutdown kick nats-py's flusher at once, as before."""
        sub, (msg,) = await _messages(js, space, 1)
        settler = _settler(nc)
        counted = Counted(nc)
        settler.stopping = True
        await settler.settle(msg, Decision.nak(0.0))
        assert [p for _, p in counted.calls] == [b"-NAK"]
        (again,) = await sub.fetch(1, timeout=5)
        assert again.metadata.num_delivered == 2
        await again.ack()

    async def test_a_full_pending_buffer_uses_publish(
            self, nats_url: str, space: Space) -> None:
        """Past the client's ``pending_size`` nats-py flushes by force first: publish does."""
        nc = await nats.connect(nats_url, pending_size=64)  # an ack line is longer
        try:
            js = nc.jetstream()
            _, (msg,) = await _messages(js, space, 1)
            settler = _settler(nc)
            assert settler.replies.fast
            counted = Counted(nc)
            await settler.settle(msg, Decision.ack())
            assert [p for _, p in counted.calls] == [b"+ACK"]

            async def acked() -> bool:
                return bool((await _info(js, space)).ack_floor.stream_seq == 1)

            await eventually(acked, what="acked through publish")
        finally:
            await nc.close()

    async def test_a_closed_client_refuses_as_publish_does(
            self, nats_url: str, space: Space, js: JetStreamContext,
            caplog: pytest.LogCaptureFixture) -> None:
        """Closed: the reply goes to ``nc.publish``, which refuses; settle logs it (the server
        redelivers after ack_wait), as before."""
        nc = await nats.connect(nats_url)
        _, (msg,) = await _messages(nc.jetstream(), space, 1)
        settler = _settler(nc)
        await nc.close()
        with caplog.at_level("WARNING", logger="amebus.consumer"):
            await settler.settle(msg, Decision.ack())
        assert "could not settle" in caplog.text and "ConnectionClosedError" in caplog.text
        assert (await _info(js, space)).num_ack_pending == 1

    async def test_a_reply_settled_while_reconnecting_goes_out_once_reconnected(
            self, nats_server_fresh: NatsServer, unique_name: Callable[..., str]) -> None:
        server = nats_server_fresh
        space = Space(stream=unique_name("S"), durable=unique_name("D"),
                      prefix=unique_name("s").lower())
        async with _client(server.url) as nc:
            js = nc.jetstream()
            _, msgs = await _messages(js, space, 2)
            settler = _settler(nc)
            counted = Counted(nc)
            restart = asyncio.create_task(server.restart())
            try:
                await eventually(lambda: nc.is_reconnecting, 10, what="client reconnecting")
                assert not settler.replies.write(msgs[0].reply, b"+ACK")  # the guard says no
                await settler.settle(msgs[0], Decision.ack())
                await settler.settle(msgs[1], Decision.term("bad"))
                assert [p for _, p in counted.calls] == [b"+ACK", b"+TERM bad"]
                assert nc.pending_data_size > 0  # nats-py holds them until reconnected
            finally:
                await restart
            await eventually(lambda: nc.is_connected, 10, what="client reconnected")

            async def settled() -> bool:
                info = await js.consumer_info(space.stream, space.durable)
                return bool(info.num_ack_pending == 0 and info.ack_floor.stream_seq == 2)

            await eventually(settled, 10, what="both settled after the reconnect")


@contextlib.asynccontextmanager
async def _client(url: str) -> AsyncIterator[Client]:
    nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=1.0,
                            connect_timeout=2)
    try:
        yield nc
    finally:
        await nc.close()
