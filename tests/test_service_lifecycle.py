"""Serving over time against a real nats-server: binding, drift, stopping, restarts, sharing.

Binding creates or checks the stream and the durable consumer (drift is updated or refused),
``ready`` marks the bind, cancelling ``serve`` loses nothing, a server crash and restart is
ridden out, and instances on one durable share the work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import nats
import pytest
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, StorageType

from amebus import ConfigurationError, Route, Service
from amebus.pull import Puller
from amebus.testing import NatsServer


class Recorder:
    """A handler recording the stream sequence of every delivery, after an optional pause."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.seqs: list[int] = []

    async def __call__(self, msg: Msg) -> None:
        if self.pause:
            await asyncio.sleep(self.pause)
        self.seqs.append(msg.metadata.sequence.stream)


def recording_service(pattern: str, recorder: Recorder) -> Service:
    async def handle(msg: Msg) -> None:
        await recorder(msg)

    class Recording(Service):
        everything = Route(pattern, handle)

    return Recording()


async def fill(nc: Client, js: JetStreamContext, space: Space, count: int) -> None:
    """Publish ``count`` messages (pipelined core publishes) and wait until all are stored."""
    for i in range(count):
        await nc.publish(space.subject("in", str(i % 7)), b"%d" % i)
    await nc.flush()

    async def stored() -> bool:
        return (await js.stream_info(space.stream)).state.messages == count

    await eventually(stored, what=f"{count} messages stored")


async def _quiet(_: Exception) -> None:
    """An error callback that keeps expected disconnects out of the test output."""


class TestBinding:
    """serve() creates or checks the stream and the consumer before ``ready`` is set."""

    async def test_ready_once_bound(self, js: JetStreamContext, space: Space) -> None:
        recorder = Recorder()
        ready = asyncio.Event()
        service = recording_service(space.subject(">"), recorder)
        task = asyncio.create_task(service.serve(js, ready=ready, **space.options()))
        try:
            await asyncio.wait_for(ready.wait(), 5)
            info = await js.consumer_info(space.stream, space.durable)  # exists by now
            assert info.config.ack_policy == AckPolicy.EXPLICIT
            assert info.config.deliver_subject is None
            assert info.config.ack_wait == 2.0
            assert info.config.max_deliver == 50  # the crash backstop: max(10 x 3, 50)
            stream = await js.stream_info(space.stream)
            assert stream.config.subjects == [f"{space.prefix}.>"]
            assert stream.config.storage == StorageType.FILE
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: recorder.seqs == [1], what="the message handled")
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def test_serve_takes_the_client(self, nc: Client, js: JetStreamContext,
                                          space: Space) -> None:
        recorder = Recorder()
        async with serving(recording_service(space.subject(">"), recorder), nc,
                           **space.options()):
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: recorder.seqs == [1], what="the message handled")

    async def test_missing_stream_says_how_to_create_it(self, js: JetStreamContext,
                                                        space: Space) -> None:
        service = recording_service(space.subject(">"), Recorder())
        options = space.options(stream_subjects=None)
        with pytest.raises(ConfigurationError, match="does not exist") as caught:
            await service.serve(js, **options)
        text = str(caught.value)
        assert repr(space.stream) in text
        assert f"nats stream add {space.stream}" in text
        assert "stream_subjects" in text

    async def test_stream_subjects_added_to_an_existing_stream(self, js: JetStreamContext,
                                                               space: Space) -> None:
        await js.add_stream(name=space.stream, subjects=[space.subject("old")])
        recorder = Recorder()
        service = recording_service(space.subject("new", ">"), recorder)
        options = space.options(stream_subjects=(space.subject("new", ">"),))
        async with serving(service, js, **options):
            info = await js.stream_info(space.stream)
            assert info.config.subjects == [space.subject("old"), space.subject("new", ">")]
            await js.publish(space.subject("old"), b"old")
            await js.publish(space.subject("new", "x"), b"new")
            await eventually(lambda: recorder.seqs == [2], what="the new subject handled")

    async def test_subjects_another_stream_captures(self, js: JetStreamContext, space: Space,
                                                   unique_name: Callable[..., str]) -> None:
        other = unique_name("OTHER")
        await js.add_stream(name=other, subjects=[space.subject("taken", ">")])
        try:
            await js.add_stream(name=space.stream, subjects=[space.subject("mine")])
            service = recording_service(space.subject("taken", ">"), Recorder())
            options = space.options(stream_subjects=(space.subject("taken", ">"),))
            with pytest.raises(ConfigurationError, match="could not add subjects"):
                await service.serve(js, **options)
        finally:
            await js.delete_stream(other)

    @pytest.mark.parametrize(("config", "field"), [
        ({"deliver_subject": "push.target", "ack_policy": AckPolicy.EXPLICIT},
         "deliver_subject"),
        ({"ack_policy": AckPolicy.NONE}, "ack_policy"),
        ({"ack_policy": AckPolicy.ALL}, "ack_policy"),
    ], ids=["push", "ack-none", "ack-all"])
    async def test_unusable_consumer_is_refused(self, js: JetStreamContext, space: Space,
                                                config: dict[str, Any], field: str) -> None:
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        await js.add_consumer(space.stream, ConsumerConfig(durable_name=space.durable,
                                                           **config))
        service = recording_service(space.subject(">"), Recorder())
        with pytest.raises(ConfigurationError, match=field) as caught:
            await service.serve(js, **space.options())
        assert f"nats consumer rm {space.stream} {space.durable}" in str(caught.value)
        info = await js.consumer_info(space.stream, space.durable)  # left as it was
        assert info.config.ack_policy == config["ack_policy"]


class TestDrift:
    """Serving with changed consumer settings updates the consumer, keeping its state."""

    async def test_changed_settings_update_the_consumer(self, nc: Client,
                                                        js: JetStreamContext,
                                                        space: Space) -> None:
        recorder = Recorder()
        service = recording_service(space.subject(">"), recorder)
        async with serving(service, js, **space.options(ack_wait=2.0, max_deliver=3)):
            await fill(nc, js, space, 5)
            await eventually(lambda: len(recorder.seqs) == 5, what="five handled")
            await settled(js, space)
        before = await js.consumer_info(space.stream, space.durable)
        options = space.options(ack_wait=1.5, max_deliver=7, max_ack_pending=50)
        async with serving(recording_service(space.subject(">"), recorder), js, **options):
            info = await js.consumer_info(space.stream, space.durable)
            assert info.config.ack_wait == 1.5
            assert info.config.max_deliver == 70  # the crash backstop: 10 x amebus's 7
            assert info.config.max_ack_pending == 50
            assert info.created == before.created  # updated in place, not recreated
            assert info.ack_floor.stream_seq == 5  # nothing is delivered again
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: len(recorder.seqs) == 6, what="the sixth handled")
        assert recorder.seqs == [1, 2, 3, 4, 5, 6]

    async def test_unlimited_max_deliver(self, js: JetStreamContext, space: Space) -> None:
        service = recording_service(space.subject(">"), Recorder())
        async with serving(service, js, **space.options(max_deliver=0)):
            info = await js.consumer_info(space.stream, space.durable)
        assert info.config.max_deliver == -1

    async def test_changed_routes_update_the_filter(self, js: JetStreamContext,
                                                    space: Space) -> None:
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        options = space.options(server_filter="routes")
        async with serving(recording_service(space.subject("a", ">"), Recorder()), js,
                           **options):
            info = await js.consumer_info(space.stream, space.durable)
            assert info.config.filter_subject == space.subject("a", ">")
        recorder = Recorder()
        async with serving(recording_service(space.subject("b", ">"), recorder), js,
                           **options):
            info = await js.consumer_info(space.stream, space.durable)
            assert info.config.filter_subject == space.subject("b", ">")
            await js.publish(space.subject("a", "x"), b"a")
            await js.publish(space.subject("b", "x"), b"b")
            await eventually(lambda: recorder.seqs == [2], what="only b handled")
            info = await settled(js, space)
        assert info.delivered.stream_seq == 2
        assert info.delivered.consumer_seq == 1  # the server never sent a.x


class TestServerFilter:
    """``server_filter="stream"``: unrouted messages are acked unhandled and counted."""

    async def test_unrouted_skipped(self, js: JetStreamContext, space: Space) -> None:
        recorder = Recorder()
        service = recording_service(space.subject("mine", ">"), recorder)
        async with serving(service, js, **space.options(server_filter="stream")):
            info = await js.consumer_info(space.stream, space.durable)
            assert not info.config.filter_subject
            assert not info.config.filter_subjects
            await js.publish(space.subject("other"), b"x")
            await js.publish(space.subject("mine", "1"), b"x")
            info = await settled(js, space)
            await eventually(lambda: service.stats.skipped == 1, what="a tick counting it")
        assert recorder.seqs == [2]
        assert info.ack_floor.stream_seq == 2
        total = service.stats.total()
        assert (total.handled, total.acked, total.termed) == (1, 1, 0)


class TestServingTwice:
    """Serving the same instance twice at once raises RuntimeError."""

    async def test_second_serve_refused(self, js: JetStreamContext, space: Space) -> None:
        recorder = Recorder()
        service = recording_service(space.subject(">"), recorder)
        async with serving(service, js, **space.options()):
            with pytest.raises(RuntimeError, match="already serving"):
                await service.serve(js, **space.options())
            await js.publish(space.subject("in"), b"x")  # the first serve is unharmed
            await eventually(lambda: recorder.seqs == [1], what="the message handled")
        async with serving(service, js, **space.options()):  # free again once stopped
            await js.publish(space.subject("in"), b"x")
            await eventually(lambda: recorder.seqs == [1, 2], what="the second handled")


class TestCancellation:
    """Cancelling serve mid-batch loses nothing: a new instance finishes the work."""

    async def test_nothing_lost(self, nc: Client, js: JetStreamContext, space: Space) -> None:
        total = 2000
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        await fill(nc, js, space, total)
        first = Recorder(pause=0.001)
        # ack_wait 30 s: a message neither settled nor given back would come back too late.
        options = space.options(concurrency=8, shutdown_timeout=2.0, ack_wait=30.0)
        async with serving(recording_service(space.subject(">"), first), js,
                           **options) as task:
            await eventually(lambda: len(first.seqs) >= 500, what="500 handled")
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            assert task.cancelled()
        stopped_at = len(first.seqs)
        assert stopped_at < total
        second = Recorder()
        async with serving(recording_service(space.subject(">"), second), js, **options):
            everything = set(range(1, total + 1))
            await eventually(lambda: set(first.seqs) | set(second.seqs) == everything,
                             timeout=10, what="every message handled")
            info = await settled(js, space)
        assert info.num_pending == 0
        assert info.num_ack_pending == 0
        assert len(first.seqs) == stopped_at  # nothing ran after serve() returned
        assert len(first.seqs) + len(second.seqs) == total  # and nothing ran twice


class TestServerRestart:
    """A server killed and restarted on the same store mid-stream loses nothing."""

    async def test_kill_and_restart(self, nats_server_fresh: NatsServer) -> None:
        server = nats_server_fresh
        client = await nats.connect(server.url, max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.05, connect_timeout=2,
                                    error_cb=_quiet)
        js = client.jetstream()
        try:
            space = Space(stream="RESTART", durable="restart", prefix="restart")
            total = 1000
            recorder = Recorder(pause=0.002)
            service = recording_service(space.subject(">"), recorder)
            options = space.options(concurrency=4, ack_wait=1.0, max_deliver=-1)
            async with serving(service, js, **options) as task:
                await fill(client, js, space, total)
                await eventually(lambda: len(recorder.seqs) >= 200, what="200 handled")
                await server.kill()
                await asyncio.sleep(0.3)
                assert not task.done()
                await server.restart()
                for i in range(100):  # and new messages flow after the restart
                    await js.publish(space.subject("after", str(i)), b"x")
                everything = set(range(1, total + 101))
                await eventually(lambda: set(recorder.seqs) >= everything, timeout=20,
                                 what="every message handled after the restart")
                info = await settled(js, space, timeout=10)
                assert not task.done()  # serve rode it out
            assert client.stats["reconnects"] >= 1
            assert info.num_pending == 0
            assert info.num_ack_pending == 0
        finally:
            await client.close()


class TestSharing:
    """Two service instances on one durable share the work."""

    async def test_two_instances(self, js: JetStreamContext, nc: Client,
                                 space: Space) -> None:
        a, b = Recorder(pause=0.005), Recorder(pause=0.005)
        options = space.options(batch=8)
        async with (serving(recording_service(space.subject(">"), a), js, **options),
                    serving(recording_service(space.subject(">"), b), js, **options)):
            await fill(nc, js, space, 200)
            await eventually(lambda: len(a.seqs) + len(b.seqs) >= 200, timeout=10,
                             what="200 handled")
            await settled(js, space)
        assert a.seqs and b.seqs
        assert set(a.seqs) | set(b.seqs) == set(range(1, 201))
        assert not set(a.seqs) & set(b.seqs)


class TestServingEnds:
    """Serving ends with an error, not silently, when it can no longer receive."""

    async def test_consumer_deleted(self, js: JetStreamContext, space: Space) -> None:
        service = recording_service(space.subject(">"), Recorder())
        async with serving(service, js, reraise=False, **space.options()) as task:

            async def request_waiting() -> bool:  # deleted before, the server drops it unanswered
                info = await js.consumer_info(space.stream, space.durable)
                return info.num_waiting >= 1

            await eventually(request_waiting, what="the pull request waiting on the server")
            await js.delete_consumer(space.stream, space.durable)
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, "serve() kept running with its consumer deleted"
            with pytest.raises(ConfigurationError, match="deleted"):
                task.result()

    async def test_missing_consumer_is_not_polled_in_a_loop(self, nc: Client,
                                                            js: JetStreamContext,
                                                            space: Space) -> None:
        """A pull request to a consumer that is gone gets 503 (no responders) at once: the
        engine must not answer each 503 with a new request, and must end with an error."""
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        puller = Puller(nc, space.stream, space.durable)  # never created
        sent = nc.stats["out_msgs"]
        await puller.start()
        try:
            with pytest.raises(ConfigurationError, match=space.durable):
                await asyncio.wait_for(puller.next(), 5)
            assert nc.stats["out_msgs"] - sent < 20
        finally:
            await puller.stop()

    async def test_connection_closed(self, nats_url: str, space: Space) -> None:
        client = await nats.connect(nats_url, error_cb=_quiet)
        service = recording_service(space.subject(">"), Recorder())
        async with serving(service, client.jetstream(), reraise=False,
                           **space.options()) as task:
            await client.close()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, "serve() kept running on a closed connection"
            with pytest.raises(ConnectionError, match="closed"):
                task.result()
