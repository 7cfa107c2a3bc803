"""Hostile text in payload fields that reach reasons and exceptions, exceptions whose
``__str__`` is broken, and result events on subjects near the control-line limit
(Hypothesis against a real nats-server): the consumer never stops, every message is settled
as the settlement table says, and every reason and dead-letter header is printable text of
at most 300 characters."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator

import attrs
import pytest
from _scenario import Outcome, close, connect, ensure_stream, scaled, wait_for
from _support import serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from strategies import failure_kinds, hostile_order, hostile_text, subject_lengths

from amebus import Event, Failure, Route, Service, Term
from amebus.publish import MAX_CONTROL_LINE, MAX_SUBJECT
from amebus.testing import NatsServer

pytestmark = pytest.mark.reliability

PREFIX = "hostile.out."


@attrs.frozen
class Order(Event):
    subject_pattern = "hostile.order.*"
    id: str
    amount: int
    note: str = ""


@attrs.frozen
class Emitted(Event):
    subject_pattern = "hostile.out.*"
    tag: str

    def subject(self) -> tuple[str, ...]:
        return ("hostile", "out", self.tag)


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError(self.args[0])


class NonStr(Exception):
    def __str__(self) -> str:
        return self.args  # type: ignore[return-value]  # the hostile case


class HostileService(Service):
    stream = "HOSTILE"
    durable = "hostile"
    dead_letter_subject = "dlq.hostile"
    max_deliver = 2
    backoff = (0.02,)
    ack_wait = 10.0
    concurrency = 4

    def __init__(self, done: Counter[int]) -> None:
        self.done = done

    @Route(Order)
    async def order(self, order: Order, msg: Msg) -> Emitted | None:
        kind, _, length = order.id.partition(":")
        seq = msg.metadata.sequence.stream
        if kind == "good":
            self.done[seq] += 1
            return None
        if kind == "term":
            raise Term(f"refused {order.note}")
        if kind == "raise":
            raise ValueError(order.note)
        if kind == "str-raises":
            raise BrokenStr(order.note)
        if kind == "str-not-str":
            raise NonStr(order.note)
        if kind == "evil-name":
            raise type(order.note or "E", (Exception,), {})(order.note)
        tag = f"{seq}-"
        return Emitted(tag + "t" * (int(length) - len(PREFIX) - len(tag)))


class Tracer:
    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def trace(self, failure: Failure) -> None:
        self.failures.append(failure)

    def of(self, seq: int) -> list[Failure]:
        return [f for f in self.failures if f.stream_seq == seq]


@attrs.define(repr=False)
class Env:
    nc: Client
    task: asyncio.Task[None]
    tracer: Tracer
    done: Counter[int]
    terminated: dict[int, str]
    dead_letters: dict[int, dict[str, str]]
    emitted: list[str]
    counts: Counter[str] = attrs.Factory(Counter)
    sent: int = 0

    def __repr__(self) -> str:
        return f"Env(sent={self.sent}, serving={not self.task.done()})"


@pytest.fixture
async def env() -> AsyncIterator[Env]:
    async with NatsServer() as server:
        nc = await connect(server.url)
        terminated: dict[int, str] = {}
        dead_letters: dict[int, dict[str, str]] = {}
        emitted: list[str] = []

        async def on_terminated(msg: Msg) -> None:
            advisory = json.loads(msg.data)
            terminated[advisory["stream_seq"]] = advisory.get("reason", "")

        async def on_dead_letter(msg: Msg) -> None:
            headers = msg.headers or {}
            dead_letters[int(headers.get("Amebus-Original-Sequence", "0"))] = headers

        async def on_emitted(msg: Msg) -> None:
            emitted.append(msg.subject)

        await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.HOSTILE.hostile",
                           cb=on_terminated)
        await nc.subscribe("dlq.hostile", cb=on_dead_letter)
        await nc.subscribe("hostile.out.*", cb=on_emitted)
        await ensure_stream(nc, "HOSTILE", ["hostile.>"])
        await ensure_stream(nc, "DLQ", ["dlq.>"])
        tracer, done = Tracer(), Counter[int]()
        began = time.monotonic()
        try:
            async with serving(HostileService(done), nc.jetstream(), ready_within=20,
                               error_tracer=tracer) as task:
                state = Env(nc, task, tracer, done, terminated, dead_letters, emitted)
                yield state
        finally:
            await close(nc)
        if state.counts:
            Outcome("hostile text (Hypothesis)", state.sent, "surrogates, controls, broken "
                    "__str__, subjects near the control-line limit", 0, 0, [], [],
                    time.monotonic() - began, dict(state.counts)).report()


def _safe(text: str) -> bool:
    """The oracle for text on the wire: printable, one line, encodable, bounded."""
    return text.isprintable() and len(text) <= 300 and bool(text.encode())


async def _publish(env: Env, payload: bytes) -> int:
    env.sent += 1
    ack = await env.nc.jetstream(timeout=10).publish(f"hostile.order.m{env.sent}", payload)
    return ack.seq


@settings(max_examples=scaled(25, 250), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(batch=st.lists(st.tuples(failure_kinds, hostile_text, subject_lengths), min_size=1,
                      max_size=6))
async def test_hostile_text_is_settled_safely(env: Env,
                                              batch: list[tuple[str, str, int]]) -> None:
    sent = [(await _publish(env, hostile_order(kind, note, length)), kind, note, length)
            for kind, note, length in batch]
    sentinel = await _publish(env, hostile_order("good", "sentinel", 0))

    def emitted(seq: int) -> bool:
        return any(s.startswith(f"{PREFIX}{seq}-") for s in env.emitted)

    def finished() -> bool:
        return sentinel in env.done and all(
            seq in env.terminated or (kind == "emit" and emitted(seq))
            for seq, kind, _, _ in sent)

    await wait_for(finished, 20, "the sentinel handled and every hostile order settled")
    assert not env.task.done(), "serve() stopped"
    for seq, kind, _, length in sent:
        env.counts[kind] += 1
        if kind == "emit" and length <= MAX_SUBJECT:  # always carried
            assert emitted(seq) and seq not in env.terminated, (seq, length)
        if kind == "emit" and length + len("HPUB  ") > MAX_CONTROL_LINE:  # never
            assert seq in env.terminated and not emitted(seq), (seq, length)
        if kind == "emit" and emitted(seq):
            assert not env.tracer.of(seq), env.tracer.of(seq)
            env.counts["emit stored"] += 1
            continue
        reason = env.terminated[seq]
        assert _safe(reason), (kind, reason)
        failures = env.tracer.of(seq)
        if kind == "term":
            assert reason.startswith("refused") and not failures
            continue
        assert reason.startswith("failed on attempt 2 of 2: "), reason
        assert [f.decision.action for f in failures] == ["nak", "term"], failures
        if kind == "emit":
            assert "control-line limit" in reason and length > MAX_SUBJECT
            assert all(f.stage == "post-process" for f in failures)
            env.counts["emit refused"] += 1
        copy = env.dead_letters.get(seq)
        if copy is None:  # the listener may lag the advisory
            await wait_for(lambda seq=seq: seq in env.dead_letters, 5, "the dead letter")
            copy = env.dead_letters[seq]
        assert all(value.isprintable() for value in copy.values()), copy
        assert _safe(copy["Amebus-Error"])
        if kind in ("str-raises", "str-not-str"):
            assert copy["Amebus-Error"].endswith("(str() failed)")
    env.counts["examples"] += 1


