"""Hostile input against a real nats-server (issue 11): lone surrogates and control characters
in the text a handler raises, exceptions whose ``__str__`` is broken. Each is settled as the
settlement table says, with a safe reason, and serving goes on with good traffic after it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from _support import Space, eventually, serving, settled
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

import amebus
from amebus import Route, Service, Term
from amebus._text import safe_text

TERMINATED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"


@attrs.frozen
class Order(amebus.Event):
    subject_pattern = "*.in.*"
    id: str


class BrokenStr(Exception):
    def __str__(self) -> str:
        msg = "__str__ itself fails"
        raise RuntimeError(msg)


class NonStr(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]  # the hostile case


HOSTILE_TEXT = "bad \ud800 order\x1b[2J\r\n2026-01-01 CRITICAL forged line\u202e"


@pytest.fixture
async def terminated(nc: Client, space: Space) -> AsyncIterator[list[dict[str, Any]]]:
    seen: list[dict[str, Any]] = []

    async def on(msg: Msg) -> None:
        seen.append(json.loads(msg.data))

    sub = await nc.subscribe(f"{TERMINATED}.{space.stream}.{space.durable}", cb=on)
    await nc.flush()
    yield seen
    await sub.unsubscribe()


class Recorder:
    def __init__(self) -> None:
        self.good: list[str] = []


def order_service(recorder: Recorder, behave: Any) -> Service:
    async def handle(order: Order) -> None:
        if order.id.startswith("good"):
            recorder.good.append(order.id)
            return
        behave(order)

    class Orders(Service):
        orders = Route("*.in.*", handle)

    return Orders()


async def publish_raw(js: JetStreamContext, space: Space, token: str, body: bytes) -> int:
    return (await js.publish(space.subject("in", token), body)).seq


async def test_term_reason_with_a_lone_surrogate(js: JetStreamContext, space: Space,
                                                 terminated: list[dict[str, Any]]) -> None:
    """``raise Term(f"unknown order {o.id}")`` with ``{"id": "\\ud800"}``: termed with the
    escaped reason, and the next message is handled."""

    def refuse(order: Order) -> None:
        raise Term(f"unknown order {order.id}")

    recorder = Recorder()
    service = order_service(recorder, refuse)
    async with serving(service, js, **space.options()) as task:
        await publish_raw(js, space, "o1", b'{"id": "x\\ud800\\u0007y"}')
        last = await publish_raw(js, space, "o2", b'{"id": "good-1"}')
        await settled(js, space, last)
        await eventually(lambda: terminated, what="the term advisory")
        assert not task.done()
    [advisory] = terminated
    assert advisory["reason"] == "unknown order x\\ud800\\x07y"
    assert recorder.good == ["good-1"]


@pytest.mark.parametrize("error", [BrokenStr(), NonStr(), ValueError(HOSTILE_TEXT)],
                         ids=["str-raises", "str-not-str", "surrogate-and-controls"])
async def test_hostile_exception_on_the_last_delivery(
        js: JetStreamContext, space: Space, terminated: list[dict[str, Any]],
        caplog: pytest.LogCaptureFixture, error: Exception) -> None:
    """The last delivery fails with an exception whose text is hostile: the default tracer
    logs it (pytest's log handler raises on any formatting error), the dead-letter copy is
    stored with a safe ``Amebus-Error``, the message is termed with a safe reason, and
    serving goes on."""

    def fail(order: Order) -> None:
        raise error

    recorder = Recorder()
    service = order_service(recorder, fail)
    dead = space.subject("dead")
    caplog.set_level(logging.WARNING, logger="amebus")
    async with serving(service, js, **space.options(max_deliver=1,
                                                   dead_letter_subject=dead)) as task:
        await publish_raw(js, space, "o1", b'{"id": "bad"}')
        await eventually(lambda: terminated, what="the term advisory")
        last = await publish_raw(js, space, "o2", b'{"id": "good-2"}')
        await eventually(lambda: recorder.good, what="the good message handled")
        await settled(js, space, last)
        assert not task.done()
    expected = safe_text(error)
    assert "\r" not in expected and "\n" not in expected and "\ud800" not in expected
    [advisory] = terminated
    assert advisory["reason"] == f"failed on attempt 1 of 1: {expected}"
    letter = await js.get_msg(space.stream, 2)
    assert letter.subject == dead
    assert (letter.headers or {})["Amebus-Error"] == expected
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    line = record.getMessage()
    assert expected in line and "\n" not in line and "\x1b" not in line
    if isinstance(error, BrokenStr | NonStr):
        assert expected == f"{type(error).__name__} (str() failed)"


async def test_size_check_of_a_copy_with_a_hostile_error(
        nc: Client, js: JetStreamContext, space: Space,
        terminated: list[dict[str, Any]]) -> None:
    """A payload near max_payload whose handler fails with a surrogate in its text: the size
    check computes, the message is termed without a copy, serving goes on."""

    def fail(order: Order) -> None:
        raise ValueError(HOSTILE_TEXT)

    recorder = Recorder()
    service = order_service(recorder, fail)
    filler = "x" * (nc.max_payload - 200)
    async with serving(service, js, **space.options(
            max_deliver=1, dead_letter_subject=space.subject("dead"))) as task:
        await publish_raw(js, space, "o1", json.dumps({"id": "bad", "pad": filler}).encode())
        await eventually(lambda: terminated, what="the term advisory")
        last = await publish_raw(js, space, "o2", b'{"id": "good-3"}')
        await settled(js, space, last)
        assert not task.done()
    [advisory] = terminated
    assert advisory["reason"].endswith("; not dead-lettered: too large")
    assert "\\ud800" in advisory["reason"]
    assert recorder.good == ["good-3"]
    assert (await js.stream_info(space.stream)).state.messages == 2  # no copy


def test_safe_text_rules() -> None:
    assert safe_text("plain text stays") == "plain text stays"
    assert safe_text(ValueError("a\n b")) == "ValueError: a b"
    assert safe_text(ValueError()) == "ValueError"
    assert safe_text("\ud800\x00\x7f\x9b") == "\\ud800\\x00\\x7f\\x9b"
    assert safe_text("é ✓ 🙂") == "é ✓ 🙂"
    cut = safe_text("y" * 5000)
    assert len(cut) == 300 and cut.endswith("...")
    assert safe_text(BrokenStr()) == "BrokenStr (str() failed)"
    assert safe_text(NonStr()) == "NonStr (str() failed)"
    safe_text(HOSTILE_TEXT).encode()  # never raises


# -- timeouts that a handler tries to escape ------------------------------------------------


class TimeoutTracer:
    def __init__(self) -> None:
        self.failures: list[amebus.Failure] = []

    def trace(self, failure: amebus.Failure) -> None:
        self.failures.append(failure)


async def test_timeout_holds_when_a_handler_swallows_a_cancellation(
        js: JetStreamContext, space: Space) -> None:
    """Delivery 1 of "swallow" catches CancelledError once and sleeps on; delivery 1 of
    "returns" catches it and returns. Both are settled as timeouts (nak, traced as
    ``HandlerTimeoutError``), and the next job on the same worker is still timed."""
    seen: list[tuple[str, int, str]] = []

    async def handle(msg: Msg) -> None:
        token, delivery = msg.subject.rsplit(".", 1)[-1], msg.metadata.num_delivered
        if delivery > 1:
            seen.append((token, delivery, "done"))
            return
        if token == "plain":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                seen.append((token, delivery, "cancelled"))
                raise
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append((token, delivery, "swallowed"))
            if token == "returns":
                return
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            seen.append((token, delivery, "cancelled again"))
            raise

    class Sleepy(Service):
        sleepy = Route("*.in.*", handle)

    tracer = TimeoutTracer()
    options = space.options(timeout=0.3, concurrency=1, error_tracer=tracer)
    async with serving(Sleepy(), js, **options):
        for token in ("swallow", "returns", "plain"):
            last = await publish_raw(js, space, token, b"{}")
        await eventually(lambda: len([s for s in seen if s[2] == "done"]) == 3, timeout=15,
                         what="every message handled on its second delivery")
        await settled(js, space, last)
    by_token = {t: [(d, what) for token, d, what in seen if token == t]
                for t in ("swallow", "returns", "plain")}
    assert by_token == {"swallow": [(1, "swallowed"), (1, "cancelled again"), (2, "done")],
                        "returns": [(1, "swallowed"), (2, "done")],
                        "plain": [(1, "cancelled"), (2, "done")]}
    assert sorted((f.subject.rsplit(".", 1)[-1], type(f.error).__name__, f.decision.action)
                  for f in tracer.failures) == sorted([("swallow", "HandlerTimeoutError", "nak"),
                                          ("returns", "HandlerTimeoutError", "nak"),
                                          ("plain", "HandlerTimeoutError", "nak")])


# -- settings checked at class creation and at serve() --------------------------------------


INF = float("inf")
BAD_SETTINGS = [
    ("timeout", 0, "timeout is 0"), ("timeout", -1, "timeout is -1"),
    ("timeout", "5", "timeout is '5' (str)"), ("timeout", INF, "timeout is inf"),
    ("backoff", ("1",), "backoff[0] of ('1',): the nak delay is '1' (str)"),
    ("backoff", (INF,), "backoff[0] of (inf,): the nak delay is inf"),
    ("backoff", (1e10,), "backoff[0] of (10000000000.0,): the nak delay is 10000000000.0"),
    ("backoff", "fast", "backoff is 'fast' (str)"), ("backoff", 5, "backoff is 5 (int)"),
    ("stream_subjects", "order.>", "stream_subjects is 'order.>' (str); give a tuple of "
                                   "subject patterns, like ('order.>',)"),
    ("stream_subjects", ("order..x",), "empty token"),
    ("batch", 0, "batch is 0"), ("batch", True, "batch is True"),
    ("concurrency", 0, "concurrency is 0"), ("concurrency", 1.5, "concurrency is 1.5"),
    ("ack_wait", 0, "ack_wait is 0"), ("ack_wait", 1e12, "ack_wait is 1000000000000.0"),
    ("max_deliver", -2, "max_deliver is -2"),
    ("max_ack_pending", 0, "max_ack_pending is 0"), ("shutdown_timeout", -1, "is -1"),
    ("dead_letter_subject", "dead.>", "dead_letter_subject is 'dead.>', a wildcard"),
    ("dead_letter_subject", "dead orders", "a space"),
    ("error_tracer", 5, "error_tracer is 5"), ("converter", 5, "converter is 5"),
    ("durable", "orders.eu", "durable is 'orders.eu': it contains '.'"),
    ("durable", "a b", "it contains ' '"), ("stream", "ORD*", "stream is 'ORD*'"),
    ("durable", "x" * 300, "it is 300 characters long"),
    ("server_filter", "fast", "server_filter is 'fast'"),
]


@pytest.mark.parametrize(("name", "value", "quoted"), BAD_SETTINGS,
                         ids=[f"{n}={v!r}"[:40] for n, v, _ in BAD_SETTINGS])
def test_bad_setting_refused_at_class_creation(name: str, value: object, quoted: str) -> None:
    async def handle(msg: Msg) -> None: ...

    with pytest.raises(amebus.ConfigurationError) as caught:
        type("Bad", (Service,), {"stream": "S", "r": Route("a.>", handle), name: value})
    text = str(caught.value)
    assert text.startswith("Bad: invalid configuration: ")
    assert quoted in text


@pytest.mark.parametrize(("name", "value", "quoted"),
                         [s for s in BAD_SETTINGS if s[0] != "converter"],
                         ids=[f"{n}={v!r}"[:40] for n, v, _ in BAD_SETTINGS if n != "converter"])
async def test_bad_setting_refused_at_serve(js: JetStreamContext, name: str, value: object,
                                            quoted: str) -> None:
    async def handle(msg: Msg) -> None: ...

    class Fine(Service):
        stream = "NEVER_CREATED"
        r = Route("a.>", handle)

    with pytest.raises(amebus.ConfigurationError, match="invalid configuration") as caught:
        await Fine().serve(js, **{name: value})
    assert quoted in str(caught.value)


@pytest.mark.parametrize("timeout", [0, -1, "5", float("inf"), float("nan"), True])
def test_bad_route_timeout_refused(timeout: object) -> None:
    async def handle(msg: Msg) -> None: ...

    with pytest.raises(amebus.ConfigurationError, match="give a number of seconds above 0"):
        Route("a.b", handle, timeout=timeout)  # type: ignore[arg-type]


def test_nak_delay_checked_where_it_is_raised() -> None:
    for bad, kind in [(INF, ValueError), (float("nan"), ValueError), (-1, ValueError),
                      (1e10, ValueError), ("5", TypeError), (True, TypeError)]:
        with pytest.raises(kind, match=r"the nak delay is .*; give seconds from 0 to "
                                       r"9223372036 as a number"):
            amebus.Nak(bad)  # type: ignore[arg-type]
    assert amebus.Nak(amebus.errors.MAX_DELAY).delay == amebus.errors.MAX_DELAY
    assert amebus.Nak(5).delay == 5.0 and amebus.Nak().delay is None
    with pytest.raises(ValueError, match="the nak delay is inf"):
        amebus.Decision.nak(INF)


async def test_bad_nak_is_a_handler_failure(js: JetStreamContext, space: Space) -> None:
    """``raise Nak(inf)`` and ``raise Nak("5")`` fail where raised (a ValueError/TypeError,
    retried with the backoff); a Nak whose delay was changed after it was made is a failure of
    the handler too. None of them ends serve()."""
    done: list[str] = []

    async def handle(msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        if msg.metadata.num_delivered > 1:
            done.append(token)
            return
        if token == "inf":
            raise amebus.Nak(INF)
        if token == "str":
            raise amebus.Nak("5")  # type: ignore[arg-type]
        nak = amebus.Nak(1)
        nak.delay = 1e12
        raise nak

    class Naks(Service):
        r = Route("*.in.*", handle)

    tracer = TimeoutTracer()
    async with serving(Naks(), js, **space.options(error_tracer=tracer)) as task:
        for token in ("inf", "str", "changed"):
            last = await publish_raw(js, space, token, b"{}")
        await eventually(lambda: len(done) == 3, what="every message handled again")
        await settled(js, space, last)
        assert not task.done()
    assert sorted(done) == ["changed", "inf", "str"]
    kinds = sorted((f.subject.rsplit(".", 1)[-1], type(f.error).__name__, f.decision.action)
                   for f in tracer.failures)
    assert kinds == [("changed", "ValueError", "nak"), ("inf", "ValueError", "nak"),
                     ("str", "TypeError", "nak")]


def test_float_out_of_range_refused_like_infinity() -> None:
    @attrs.frozen
    class Reading(amebus.Event):
        subject = "reading.x"
        value: float

    for payload in (b'{"value": 1e400}', b'{"value": -1e400}', b'{"value": 1' + b"0" * 400
                    + b"}"):
        with pytest.raises(amebus.DecodeError):
            amebus.codec.default_codec.decode(Reading, payload)
    assert amebus.codec.default_codec.decode(Reading, b'{"value": 1e300}').value == 1e300


# -- subjects the connection cannot carry ---------------------------------------------------


@attrs.frozen
class Tagged(amebus.Event):
    subject_pattern = "*.out.*"
    ns: str
    tag: str

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "out", self.tag)


async def test_a_subject_over_the_control_line_is_refused_before_sending(
        nc: Client, js: JetStreamContext, space: Space) -> None:
    await js.add_stream(name=space.stream, subjects=[space.subject(">")])
    long = Tagged(space.prefix, "t" * 4_100)
    with pytest.raises(amebus.SubjectError, match="control-line limit of 4096") as caught:
        await long.publish(js)
    size = len(amebus.subject_of(long).encode())
    assert "nothing was sent" in str(caught.value) and f"is {size} bytes" in str(caught.value)
    assert nc.is_connected
    ok1, ok2 = Tagged(space.prefix, "ok1"), Tagged(space.prefix, "ok2")
    with pytest.raises(amebus.SubjectError, match=r"events\[1\]: .*nothing was published"):
        await amebus.publish_many(js, [ok1, long, ok2])
    assert (await js.stream_info(space.stream)).state.messages == 0  # checked before sending
    assert [a.seq for a in await amebus.publish_many(js, [ok1, ok2])] == [1, 2]
    assert nc.is_connected


async def test_a_handler_returning_such_an_event_fails_post_process(
        js: JetStreamContext, space: Space, terminated: list[dict[str, Any]]) -> None:
    """A post-process failure, settled by the table: nak with the backoff, termed with a
    dead-letter copy on the last delivery; the connection stays up and serving goes on."""
    handled: list[str] = []

    async def handle(order: Order) -> Tagged | None:
        handled.append(order.id)
        return None if order.id.startswith("good") else Tagged(space.prefix, "t" * 5_000)

    class Emitter(Service):
        r = Route("*.in.*", handle)

    tracer = TimeoutTracer()
    options = space.options(max_deliver=2, dead_letter_subject=space.subject("dead"),
                            error_tracer=tracer)
    async with serving(Emitter(), js, **options) as task:
        await publish_raw(js, space, "o1", b'{"id": "long"}')
        await eventually(lambda: terminated, what="the term advisory")
        last = await publish_raw(js, space, "o2", b'{"id": "good"}')
        await settled(js, space, last)
        assert not task.done()
    assert handled == ["long", "long", "good"]
    assert [(f.stage, type(f.error).__name__, f.decision.action) for f in tracer.failures] == [
        ("post-process", "SubjectError", "nak"), ("post-process", "SubjectError", "term")]
    [advisory] = terminated
    assert "control-line limit of 4096" in advisory["reason"]
    letter = await js.get_msg(space.stream, 2)
    assert letter.subject == space.subject("dead")


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(length=st.integers(3_900, 4_200), note=st.integers(0, 60_000))
async def test_subjects_near_the_limit(nc: Client, js: JetStreamContext, space: Space,
                                       length: int, note: int) -> None:
    """Property, against the real server: an event whose subject is near the control-line
    limit (with payloads of every size class, so the size digits vary) is either stored or
    refused with SubjectError; a subject up to MAX_SUBJECT is always stored; the connection
    never closes."""
    await js.add_stream(name=space.stream, subjects=[space.subject(">")])  # idempotent
    event = Tagged(space.prefix, "t" * (length - len(space.subject("out", ""))))
    before = (await js.stream_info(space.stream)).state.messages
    try:
        await event.publish(js, headers={"X-Note": "n" * note})  # JetStream: headers < 64 KiB
    except amebus.SubjectError:
        assert length > amebus.publish.MAX_SUBJECT
        stored = 0
    else:
        stored = 1
    assert nc.is_connected
    assert (await js.stream_info(space.stream)).state.messages == before + stored


# -- the dead-letter copy never carries the original's control headers -----------------------


async def test_dead_letter_copy_renames_control_headers(
        nc: Client, js: JetStreamContext, space: Space,
        terminated: list[dict[str, Any]]) -> None:
    """Originals with ``Nats-Expected-Stream`` (``js.publish(stream=)``), ``Nats-TTL`` and
    ``Nats-Rollup`` that do not decode: each copy is stored in a dead-letter stream that
    allows TTLs and rollups, with those headers renamed ``Amebus-Original-<Name>``; the
    copies neither expire nor purge an earlier dead letter."""
    from nats.js.api import StreamConfig

    dead = space.subject("dead")
    dlq = space.stream + "_DLQ"
    for name, subjects in ((space.stream, [space.subject("in", ">")]), (dlq, [dead])):
        await js.add_stream(StreamConfig(name=name, subjects=subjects, allow_rollup_hdrs=True,
                                         allow_msg_ttl=True))
    try:
        earlier = await js.publish(dead, b"an earlier dead letter")
        await js.publish(space.subject("in", "a"), b"not json", stream=space.stream)
        await js.publish(space.subject("in", "b"), b"not json", headers={"Nats-TTL": "1s"})
        await js.publish(space.subject("in", "c"), b"not json",
                         headers={"Nats-Rollup": "sub", "X-Keep": "kept"})
        recorder = Recorder()
        async with serving(order_service(recorder, None), js, **space.options(
                dead_letter_subject=dead, stream_subjects=None)) as task:
            await eventually(lambda: len(terminated) == 3, what="three term advisories")
            last = await publish_raw(js, space, "d", b'{"id": "good-dl"}')
            await settled(js, space, last)
            assert not task.done()
        assert recorder.good == ["good-dl"]
        state = (await js.stream_info(dlq)).state
        assert state.messages == 4 and state.first_seq == earlier.seq  # nothing purged
        copies = [await js.get_msg(dlq, seq) for seq in range(2, 5)]
        by_subject = {(c.headers or {})["Amebus-Original-Subject"]: c.headers or {}
                      for c in copies}
        a, b, c = (by_subject[space.subject("in", t)] for t in "abc")
        assert a["Amebus-Original-Nats-Expected-Stream"] == space.stream
        assert b["Amebus-Original-Nats-TTL"] == "1s"
        assert c["Amebus-Original-Nats-Rollup"] == "sub" and c["X-Keep"] == "kept"
        for headers in (a, b, c):
            assert not [k for k in headers if k.lower().startswith("nats-")], headers
            assert headers["Amebus-Stage"] == "pre-process"
    finally:
        await js.delete_stream(dlq)


async def test_multi_valued_header_keeps_its_last_value(
        nc: Client, js: JetStreamContext, space: Space,
        terminated: list[dict[str, Any]]) -> None:
    """The documented limit: nats-py 2.16 hands amebus one value per header name (the last),
    so the copy has ``X-Multi: b``; the original in its stream keeps both values (its
    ``Amebus-Original-Sequence`` finds it)."""
    import base64

    dead = space.subject("dead")
    await js.add_stream(name=space.stream, subjects=[space.subject(">")])
    url = nc.connected_url
    assert url is not None and url.hostname is not None and url.port is not None
    block = b"NATS/1.0\r\nX-Multi: a\r\nX-Multi: b\r\n\r\n"
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        subject = space.subject("in", "multi").encode()
        writer.write(b"HPUB %s %d %d\r\n%snot json\r\nPING\r\n" % (
            subject, len(block), len(block) + 8, block))
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"PONG")
    finally:
        writer.close()
    async with serving(order_service(Recorder(), None), js,
                       **space.options(dead_letter_subject=dead)):
        await eventually(lambda: terminated, what="the term advisory")
    original, copy = await js.get_msg(space.stream, 1), await js.get_msg(space.stream, 2)
    assert original.hdrs is not None
    raw = base64.b64decode(original.hdrs)
    assert b"X-Multi: a\r\nX-Multi: b\r\n" in raw
    assert (copy.headers or {})["X-Multi"] == "b"
    assert (copy.headers or {})["Amebus-Original-Sequence"] == "1"


# -- a dead-letter subject must be stored, and must not loop ---------------------------------


async def test_serve_refuses_a_dead_letter_subject_no_stream_captures(
        js: JetStreamContext, space: Space, unique_name: Any) -> None:
    nowhere = unique_name("nodlq").lower() + ".dead"
    with pytest.raises(amebus.ConfigurationError, match="no stream captures it") as caught:
        await order_service(Recorder(), None).serve(
            js, **space.options(dead_letter_subject=nowhere))
    assert repr(nowhere) in str(caught.value) and "dead_letter_stream" in str(caught.value)


async def test_serve_refuses_a_dead_letter_subject_that_loops(js: JetStreamContext,
                                                              space: Space) -> None:
    """The copies would be stored in the consumed stream on a subject a route matches."""
    looping = space.subject("in", "dead")  # the route is *.in.*
    with pytest.raises(amebus.ConfigurationError, match=r"matches the route pattern '\*.in.\*'"):
        await order_service(Recorder(), None).serve(
            js, **space.options(dead_letter_subject=looping))


async def test_dead_letter_stream_is_created_when_asked(
        js: JetStreamContext, space: Space, terminated: list[dict[str, Any]],
        unique_name: Any) -> None:
    dead, dlq = unique_name("dl").lower() + ".orders", space.stream + "_DLQ"
    recorder = Recorder()
    try:
        async with serving(order_service(recorder, None), js, **space.options(
                dead_letter_subject=dead, dead_letter_stream=dlq)):
            await publish_raw(js, space, "x", b"not json")
            await eventually(lambda: terminated, what="the term advisory")
        copy = await js.get_msg(dlq, 1)
        assert copy.subject == dead and copy.data == b"not json"
        assert (await js.stream_info(dlq)).config.subjects == [dead]
        with pytest.raises(amebus.ConfigurationError, match="not by dead_letter_stream"):
            await order_service(recorder, None).serve(js, **space.options(
                dead_letter_subject=dead, dead_letter_stream=dlq + "_OTHER"))
    finally:
        await js.delete_stream(dlq)


async def test_a_handler_swallowing_every_cancellation_is_redelivered(
        js: JetStreamContext, space: Space) -> None:
    """It cannot be stopped from outside, but it gets no in-progress signal past its timeout,
    so the server redelivers the message after ack_wait to a free worker."""
    redelivered = asyncio.Event()
    cancels: list[int] = []

    async def handle(msg: Msg) -> None:
        if msg.metadata.num_delivered > 1:
            redelivered.set()
            return
        while not redelivered.is_set():
            try:
                await redelivered.wait()
            except asyncio.CancelledError:
                cancels.append(1)  # swallowed, every time

    class Stubborn(Service):
        r = Route("*.in.*", handle)

    options = space.options(timeout=0.2, ack_wait=1.0, concurrency=2,
                            error_tracer=TimeoutTracer())
    async with serving(Stubborn(), js, **options) as task:
        last = await publish_raw(js, space, "x", b"{}")
        await asyncio.wait_for(redelivered.wait(), 10)
        await settled(js, space, last)
        assert not task.done()
    assert len(cancels) >= 2  # the watchdog kept cancelling


async def test_serve_refuses_dead_letters_in_a_consumed_interest_stream(
        js: JetStreamContext, space: Space) -> None:
    from nats.js.api import RetentionPolicy, StreamConfig

    await js.add_stream(StreamConfig(name=space.stream, subjects=[space.subject(">")],
                                     retention=RetentionPolicy.INTEREST))
    with pytest.raises(amebus.ConfigurationError, match="whose retention is 'interest'"):
        await order_service(Recorder(), None).serve(js, **space.options(
            dead_letter_subject=space.subject("dead"), stream_subjects=None))
