"""The server's publish features through amebus, against a real nats-server: per-message TTL,
optimistic concurrency, atomic batches, schedules, and publish-side strictness."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import attrs
import nats.js.errors
import pytest
from _support import eventually
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

from amebus import Event, publish_many
from amebus.errors import (
    BatchPublishError,
    DecodeError,
    NoStreamError,
    PublishError,
    SequenceConflictError,
    StreamSettingError,
)
from amebus.schedules import SCHEDULE_PREFIX


@attrs.frozen
class Noted(Event):
    scope: str
    key: str
    text: str

    def subject(self) -> tuple[str, ...]:
        return (self.scope, "noted", self.key)


@attrs.frozen
class Stream:
    name: str
    prefix: str


async def _make(js: JetStreamContext, unique_name: Callable[..., str],
                **features: bool) -> Stream:
    made = Stream(unique_name("PLAT"), unique_name("pl"))
    await js.add_stream(StreamConfig(
        name=made.name, subjects=[f"{made.prefix}.>", f"{SCHEDULE_PREFIX}.{made.prefix}.>"],
        **features))
    return made


@pytest.fixture
async def plain(js: JetStreamContext, unique_name: Callable[..., str]) -> AsyncIterator[Stream]:
    """A stream with none of the 2.11+ features enabled."""
    made = await _make(js, unique_name)
    yield made
    with contextlib.suppress(Exception):
        await js.delete_stream(made.name)


@pytest.fixture
async def featured(js: JetStreamContext,
                   unique_name: Callable[..., str]) -> AsyncIterator[Stream]:
    """A stream allowing message TTLs, atomic batches and schedules."""
    made = await _make(js, unique_name, allow_msg_ttl=True, allow_atomic=True,
                       allow_msg_schedules=True)
    yield made
    with contextlib.suppress(Exception):
        await js.delete_stream(made.name)


async def count(js: JetStreamContext, stream: Stream) -> int:
    return (await js.stream_info(stream.name)).state.messages


async def gone(js: JetStreamContext, stream: Stream, seq: int) -> bool:
    try:
        await js.get_msg(stream.name, seq)
    except nats.js.errors.NotFoundError:
        return True
    return False


class TestTTL:
    async def test_a_ttl_message_expires(self, js: JetStreamContext, featured: Stream) -> None:
        keep = await Noted(featured.prefix, "k", "stays").publish(js)
        ack = await Noted(featured.prefix, "t", "goes").publish(js, ttl=1)
        msg = await js.get_msg(featured.name, ack.seq)
        assert (msg.headers or {}).get("Nats-TTL") == "1s"
        started = time.monotonic()
        await eventually(lambda: gone(js, featured, ack.seq), timeout=5, what="TTL expiry")
        assert time.monotonic() - started >= 0.5  # not gone at once: it lived about its TTL
        assert not await gone(js, featured, keep.seq)

    async def test_publish_many_ttl(self, js: JetStreamContext, featured: Stream) -> None:
        acks = await publish_many(js, [Noted(featured.prefix, str(i), "x") for i in range(3)],
                                  ttl=timedelta(seconds=1))
        for ack in acks:
            msg = await js.get_msg(featured.name, ack.seq)
            assert (msg.headers or {}).get("Nats-TTL") == "1s"

    async def test_a_stream_without_ttl_names_the_setting(self, js: JetStreamContext,
                                                           plain: Stream) -> None:
        with pytest.raises(StreamSettingError) as caught:
            await Noted(plain.prefix, "t", "x").publish(js, ttl=5)
        assert caught.value.setting == "allow_msg_ttl"
        assert "per-message TTL is disabled" in str(caught.value)
        assert "set allow_msg_ttl=True" in str(caught.value)
        assert await count(js, plain) == 0

    @pytest.mark.parametrize("ttl", [0, 0.5, -1, "5s", True, float("nan")])
    async def test_a_bad_ttl_is_refused_before_sending(self, js: JetStreamContext,
                                                       featured: Stream, ttl: object) -> None:
        with pytest.raises(ValueError, match=rf"^ttl is {ttl!r}; give seconds of at least 1"):
            await Noted(featured.prefix, "t", "x").publish(js, ttl=ttl)
        assert await count(js, featured) == 0


class TestOptimisticConcurrency:
    async def test_a_conflict_raises_the_typed_error(self, js: JetStreamContext,
                                                     plain: Stream) -> None:
        first = await Noted(plain.prefix, "a", "v1").publish(
            js, expected_last_subject_sequence=0)
        second = await Noted(plain.prefix, "a", "v2").publish(
            js, expected_last_subject_sequence=first.seq)
        with pytest.raises(SequenceConflictError) as caught:
            await Noted(plain.prefix, "a", "stale").publish(
                js, expected_last_subject_sequence=first.seq)
        assert caught.value.actual == second.seq
        assert f"wrong last sequence: {second.seq}" in str(caught.value)
        assert isinstance(caught.value, PublishError)
        assert await count(js, plain) == 2

    async def test_stream_level_expectations(self, js: JetStreamContext, plain: Stream) -> None:
        ack = await Noted(plain.prefix, "a", "v1").publish(js, expected_stream=plain.name,
                                                           expected_last_sequence=0)
        with pytest.raises(SequenceConflictError) as caught:
            await Noted(plain.prefix, "b", "v1").publish(js, expected_last_sequence=0)
        assert caught.value.actual == ack.seq
        with pytest.raises(PublishError, match="expected stream does not match"):
            await Noted(plain.prefix, "b", "v1").publish(js, expected_stream="ELSEWHERE")
        assert await count(js, plain) == 1

    async def test_a_bad_sequence_is_refused_before_sending(self, js: JetStreamContext,
                                                            plain: Stream) -> None:
        with pytest.raises(ValueError, match=r"^expected_last_subject_sequence is '3'; give"):
            await Noted(plain.prefix, "a", "v").publish(
                js, expected_last_subject_sequence="3")
        assert await count(js, plain) == 0


@attrs.frozen
class Sized(Event):
    scope: str
    blob: str

    def subject(self) -> tuple[str, ...]:
        return (self.scope, "sized")


class TestAtomic:
    async def test_all_are_stored(self, js: JetStreamContext, featured: Stream) -> None:
        events = [Noted(featured.prefix, str(i), f"n{i}") for i in range(25)]
        acks = await publish_many(js, events, atomic=True)
        assert [a.seq for a in acks] == list(range(1, 26))
        for event, ack in zip(events, acks, strict=True):
            msg = await js.get_msg(featured.name, ack.seq)
            assert msg.subject == f"{featured.prefix}.noted.{event.key}"

    async def test_one_refused_event_stores_none(self, js: JetStreamContext,
                                                 unique_name: Callable[..., str]) -> None:
        made = Stream(unique_name("PLAT"), unique_name("pl"))
        await js.add_stream(StreamConfig(name=made.name, subjects=[f"{made.prefix}.>"],
                                         allow_atomic=True, max_msg_size=200))
        try:
            events = [Sized(made.prefix, "x" * 10) for _ in range(5)]
            events[3] = Sized(made.prefix, "x" * 400)  # over the stream's max_msg_size
            with pytest.raises(BatchPublishError) as caught:
                await publish_many(js, events, atomic=True)
            assert caught.value.acks == [None] * 5
            assert "was not stored, none of it" in str(caught.value)
            assert await count(js, made) == 0
            # the same batch without the refused event is stored whole
            del events[3]
            assert len(await publish_many(js, events, atomic=True)) == 4
            assert await count(js, made) == 4
        finally:
            await js.delete_stream(made.name)

    async def test_a_stream_without_atomic_names_the_setting(self, js: JetStreamContext,
                                                              plain: Stream) -> None:
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(js, [Noted(plain.prefix, str(i), "x") for i in range(3)],
                               atomic=True)
        error = caught.value.failures[0]
        assert isinstance(error, StreamSettingError)
        assert error.setting == "allow_atomic"
        assert "atomic publish is disabled" in str(caught.value)
        assert await count(js, plain) == 0

    async def test_over_the_limit_publishes_nothing(self, js: JetStreamContext,
                                                    featured: Stream) -> None:
        with pytest.raises(ValueError, match=r"^an atomic batch holds at most 1000 events, "
                                             r"got 1001"):
            await publish_many(js, [Noted(featured.prefix, "a", "x")] * 1001, atomic=True)
        assert await count(js, featured) == 0





class TestSchedules:
    async def test_a_delayed_event_arrives_at_its_time(self, js: JetStreamContext,
                                                       featured: Stream) -> None:
        event = Noted(featured.prefix, "later", "hello")
        target = f"{featured.prefix}.noted.later"
        sub = await js.subscribe(target, ordered_consumer=True)
        at = datetime.now(UTC) + timedelta(seconds=1.5)
        await event.publish(js, at=at, msg_id="sched-1")
        msg = await sub.next_msg(timeout=10)
        arrived = datetime.now(UTC)
        await sub.unsubscribe()
        late = (arrived - at).total_seconds()
        assert late >= -0.05, f"fired {-late:.3f}s early"
        assert late < 1.5, f"fired {late:.3f}s late"  # the server's scheduler ticks ~1 s
        assert msg.headers["Amebus-Event-Type"] == "Noted"
        assert msg.headers["Nats-Scheduler"].startswith(f"{SCHEDULE_PREFIX}.{target}.")
        assert Noted.__name__ and msg.data == event.encode().payload

    async def test_delay_and_every(self, js: JetStreamContext, featured: Stream) -> None:
        target = f"{featured.prefix}.noted.tick"
        sub = await js.subscribe(target, ordered_consumer=True)
        await Noted(featured.prefix, "tick", "t").publish(js, every=1)
        first = await sub.next_msg(timeout=5)
        second = await sub.next_msg(timeout=5)
        await sub.unsubscribe()
        assert first.data == second.data
        assert second.headers["Nats-Schedule-Next"] != "purge"  # it keeps firing

    async def test_cron_with_a_time_zone(self, js: JetStreamContext, featured: Stream) -> None:
        target = f"{featured.prefix}.noted.cron"
        sub = await js.subscribe(target, ordered_consumer=True)
        await Noted(featured.prefix, "cron", "c").publish(js, cron="* * * * * *",
                                                         time_zone="Europe/Berlin")
        msg = await sub.next_msg(timeout=5)
        await sub.unsubscribe()
        assert msg.headers["Nats-Scheduler"] == f"{SCHEDULE_PREFIX}.{target}.recurring"

    async def test_a_bad_time_zone_is_the_servers_error(self, js: JetStreamContext,
                                                        featured: Stream) -> None:
        with pytest.raises(PublishError, match="time zone is invalid"):
            await Noted(featured.prefix, "c", "c").publish(js, cron="@hourly",
                                                           time_zone="Nowhere/Atlantis")

    async def test_a_stream_without_schedules_names_the_setting(
            self, js: JetStreamContext, plain: Stream) -> None:
        with pytest.raises(StreamSettingError) as caught:
            await Noted(plain.prefix, "later", "x").publish(js, delay=60)
        assert caught.value.setting == "allow_msg_schedules"
        assert "message schedules is disabled" in str(caught.value)
        assert await count(js, plain) == 0

    async def test_no_stream_for_the_schedule_subject(self, js: JetStreamContext,
                                                      unique_name: Callable[..., str]) -> None:
        made = Stream(unique_name("PLAT"), unique_name("pl"))
        await js.add_stream(StreamConfig(name=made.name, subjects=[f"{made.prefix}.>"],
                                         allow_msg_schedules=True))
        try:
            with pytest.raises(NoStreamError, match=rf"add '{SCHEDULE_PREFIX}\.{made.prefix}"
                                                    rf"\.>' to that stream's subjects"):
                await Noted(made.prefix, "later", "x").publish(js, delay=60)
        finally:
            await js.delete_stream(made.name)

    @pytest.mark.parametrize(("options", "problem"), [
        ({"at": datetime(2030, 1, 1)}, "a naive datetime"),
        ({"delay": 1, "every": 5}, "give one of at, delay, every, cron; got delay, every"),
        ({"every": 0.5}, "every is 0.5; give an interval of at least 1 second"),
        ({"cron": "* * * * *"}, r"cron is '\* \* \* \* \*'; give six fields"),
        ({"delay": 5, "time_zone": "UTC"}, "applies to cron schedules only"),
    ])
    async def test_bad_schedules_are_refused_before_sending(
            self, js: JetStreamContext, featured: Stream, options: dict[str, object],
            problem: str) -> None:
        with pytest.raises(ValueError, match=problem):
            await Noted(featured.prefix, "x", "x").publish(js, **options)
        assert await count(js, featured) == 0


@attrs.frozen
class Paid(Event):
    subject = "strict.paid"
    order_id: str
    amount: int


class TestStrictness:
    async def test_a_wrong_field_type_is_refused_at_publish(self, js: JetStreamContext) -> None:
        with pytest.raises(TypeError) as caught:
            await Paid(order_id=1, amount=5).publish(js)  # type: ignore[arg-type]
        assert str(caught.value).startswith(
            "cannot publish Paid: expected str, got 1 (int) @ $.order_id; a consumer decoding "
            "Paid would refuse it")

    def test_a_bool_is_not_an_int(self) -> None:
        with pytest.raises(TypeError, match=r"expected int, got True \(bool\) @ \$\.amount"):
            Paid(order_id="o", amount=True).encode()

    def test_the_default_event_type_does_not_name_the_module(self) -> None:
        assert Paid.event_type == "Paid"
        assert Paid("o", 1).encode().headers["Amebus-Event-Type"] == "Paid"




class TestBytesAsText:
    def test_round_trip_and_strictness(self) -> None:
        from amebus import Codec, make_converter

        @attrs.frozen
        class Blob(Event):
            subject = "strict.blob"
            converter = make_converter(bytes_as="text")
            data: bytes

        codec = Codec()
        assert Blob(b"hi").encode().payload == b'{"data":"hi"}'
        assert codec.decode(Blob, b'{"data":"hi"}') == Blob(b"hi")
        with pytest.raises(DecodeError, match=r"expected str, got 1 \(int\) @ \$\.data"):
            codec.decode(Blob, b'{"data":1}')

    def test_an_unknown_form_is_refused(self) -> None:
        from amebus import make_converter

        with pytest.raises(ValueError, match=r"^bytes_as is 'hex'; give 'base64'"):
            make_converter(bytes_as="hex")
