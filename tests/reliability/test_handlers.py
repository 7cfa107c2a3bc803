"""Scenarios 6, 7 and 8, served in the test process: slow handlers, poison and garbage
payloads, and handlers failing in every way."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import nats.js.errors
import pytest
from _scenario import (
    FULL,
    JobService,
    Outcome,
    Recorder,
    close,
    connect,
    ensure_stream,
    job_ids,
    publish_jobs,
    read_records,
    scaled,
    settled_consumer,
    tally,
    wait_for,
    wait_until_done,
)
from _support import serving
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.aio.msg import Msg
from strategies import MAX_PAYLOAD, is_valid_order, messages

from amebus import DecodeError, Event, Failure, HandlerTimeoutError, Nak, Route, Service, Term
from amebus.testing import NatsServer

pytestmark = pytest.mark.reliability


class Tracer:
    """An ErrorTracer keeping every failure, by stream sequence."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def trace(self, failure: Failure) -> None:
        self.failures.append(failure)

    def of(self, seq: int) -> list[Failure]:
        return [f for f in self.failures if f.stream_seq == seq]


# -- 6. slow handlers ---------------------------------------------------------------------------


async def test_slow_handlers_are_not_redelivered(nats_server_fresh: NatsServer,
                                                 record_dir: Path) -> None:
    """Handlers that take 3 x ack_wait (and messages waiting behind them in the buffer) are
    kept alive by in-progress signals: every job is delivered exactly once."""
    ack_wait = 2.0 if FULL else 1.0
    count, concurrency = scaled(8, 24), 4
    ids = job_ids(count)
    recorder = Recorder(record_dir / "slow.rec", "slow")
    slow_service = type("SlowService", (JobService,), {"recorder": recorder})()
    began = time.monotonic()
    nc = await connect(nats_server_fresh.url)
    try:
        await ensure_stream(nc)
        await publish_jobs(nc, ids, sleep=3 * ack_wait)
        async with serving(slow_service, nc.jetstream(), ready_within=20, ack_wait=ack_wait,
                           concurrency=concurrency, timeout=60.0):
            records = await wait_until_done(record_dir, ids,
                                            timeout=count / concurrency * 3 * ack_wait + 30)
            info = await settled_consumer(nc, timeout=10)
    finally:
        await close(nc)
        recorder.close()
    starts = Counter(line.id for line in records.lines if line.kind == "start")
    deliveries = {line.delivery for line in records.lines}
    lost, duplicates, _ = tally(ids, records)
    Outcome("slow handlers (3 x ack_wait)", count, f"handlers of {3 * ack_wait:g} s, "
            f"ack_wait {ack_wait:g} s", lost, duplicates, [], [], time.monotonic() - began,
            {"started_more_than_once": sum(1 for n in starts.values() if n > 1),
             "deliveries_seen": sorted(deliveries)}).report()
    assert lost == 0 and duplicates == 0
    assert set(starts.values()) == {1} and deliveries == {1}
    assert info.num_redelivered == 0 and info.num_ack_pending == 0


# -- 7. poison and garbage ----------------------------------------------------------------------


@attrs.frozen
class Order(Event):
    subject_pattern = "poison.order.*"
    event_type = "amebus.reliability.Order"

    id: str
    amount: int
    note: str = ""


class PoisonService(Service):
    stream = "POISON"
    durable = "poison"
    dead_letter_subject = "dlq.poison"
    max_deliver = 3
    backoff = (0.05,)
    ack_wait = 10.0
    concurrency = 4

    def __init__(self, done: Counter[int]) -> None:
        self.done = done

    @Route(Order)
    async def order(self, order: Order, msg: Msg) -> None:
        self.done[msg.metadata.sequence.stream] += 1


@attrs.define(repr=False)  # Hypothesis prints the fixture with a failing example: keep it short
class PoisonEnv:
    nc: Client
    task: asyncio.Task[None]
    tracer: Tracer
    done: Counter[int]
    terminated: dict[int, str]
    dead_letters: dict[int, dict[str, str]]
    counts: Counter[str] = attrs.Factory(Counter)
    sent: int = 0
    scenario: str = "poison and garbage (Hypothesis)"

    def __repr__(self) -> str:
        return f"PoisonEnv(sent={self.sent}, serving={not self.task.done()})"


@pytest.fixture
async def poison() -> AsyncIterator[PoisonEnv]:
    """A server with a 64 KiB max_payload, a PoisonService serving, and listeners for the
    server's MSG_TERMINATED advisories and for the dead-letter copies."""
    async with NatsServer(max_payload=MAX_PAYLOAD) as server:
        nc = await connect(server.url)
        terminated: dict[int, str] = {}
        dead_letters: dict[int, dict[str, str]] = {}

        async def on_terminated(msg: Msg) -> None:
            advisory = json.loads(msg.data)
            terminated[advisory["stream_seq"]] = advisory.get("reason", "")

        async def on_dead_letter(msg: Msg) -> None:
            headers = msg.headers or {}
            dead_letters[int(headers.get("Amebus-Original-Sequence", "0"))] = headers

        await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.POISON.poison",
                           cb=on_terminated)
        await nc.subscribe("dlq.poison", cb=on_dead_letter)
        await ensure_stream(nc, "POISON", ["poison.>"])
        await ensure_stream(nc, "DLQ", ["dlq.>"])
        tracer, done = Tracer(), Counter[int]()
        began = time.monotonic()
        try:
            async with serving(PoisonService(done), nc.jetstream(), ready_within=20,
                               error_tracer=tracer) as task:
                env = PoisonEnv(nc, task, tracer, done, terminated, dead_letters)
                yield env
        finally:
            await close(nc)
        if env.counts:
            Outcome(env.scenario, env.sent, "garbage payloads, odd headers, near-max_payload "
                    "messages", 0, done.total() - len(done), [], [],
                    time.monotonic() - began, dict(env.counts)).report()


async def _publish(env: PoisonEnv, payload: bytes, headers: dict[str, str] | None) -> int:
    env.sent += 1
    ack = await env.nc.jetstream(timeout=10).publish(f"poison.order.m{env.sent}", payload,
                                                    headers=headers)
    return ack.seq


@settings(max_examples=scaled(40, 300), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(batch=st.lists(messages, min_size=1, max_size=10))
async def test_poison_and_garbage(poison: PoisonEnv,
                                  batch: list[tuple[bytes, dict[str, str] | None]]) -> None:
    """Hypothesis garbage mixed into good traffic: the consumer never stops, every bad message
    is termed at once with a reason (seen by the server), traced, and dead-lettered (or, when
    its copy would not fit under max_payload, traced as not copied); every good one runs."""
    env = poison
    sent = [(await _publish(env, payload, hdrs), payload, hdrs) for payload, hdrs in batch]
    sentinel = await _publish(env, b'{"id": "sentinel", "amount": 1}', None)
    good = {seq for seq, payload, _ in sent if is_valid_order(payload)} | {sentinel}
    bad = {seq for seq, _, _ in sent} - good

    def settled() -> bool:
        return good <= env.done.keys() and all(seq in env.terminated for seq in bad)

    await wait_for(settled, 20, "every good message handled and every bad one termed")
    env.counts["examples"] += 1
    env.counts["messages with odd headers"] += sum(1 for _, _, hdrs in sent if hdrs)
    for seq, payload, _ in sent:
        failures = env.tracer.of(seq)
        if seq in good:
            assert not failures, failures
            env.counts["good"] += 1
            env.counts["good near max_payload"] += len(payload) > MAX_PAYLOAD - 4_000
            continue
        assert seq not in env.done
        first = failures[0]
        assert first.stage == "pre-process" and isinstance(first.error, DecodeError), first
        assert first.deliveries == 1 and first.decision.action == "term", first
        assert first.decision.reason and env.terminated[seq], (first, env.terminated[seq])
        if seq in env.dead_letters:
            copy = env.dead_letters[seq]
            assert copy["Amebus-Dead-Letter"] == "1" and "Nats-Msg-Id" not in copy
            assert "Amebus-Event-Type" not in copy
            env.counts["bad, dead-lettered"] += 1
        else:
            too_large = [f for f in failures if f.stage == "post-process"]
            assert too_large and "max_payload" in str(too_large[0].error), failures
            assert len(payload) > MAX_PAYLOAD - 4_000
            env.counts["bad, too large to dead-letter"] += 1
    assert not env.task.done(), "serve() stopped"
    info = await settled_consumer(env.nc, "POISON", "poison", timeout=10)
    assert info.num_redelivered == 0


async def test_raw_protocol_headers(poison: PoisonEnv) -> None:
    """Header blocks nats-py would never write (sent as raw HPUB): no colon, a status line
    that looks like a 409 or a heartbeat, invalid UTF-8. Stored by the server, handled."""
    env = poison
    url = env.nc.connected_url
    assert url is not None and url.hostname is not None and url.port is not None
    blocks = [b"NATS/1.0\r\nno colon here\r\n\r\n", b"NATS/1.0 409 Consumer Deleted\r\n\r\n",
              b"NATS/1.0 100 Idle Heartbeat\r\n\r\n", b"NATS/1.0\r\nX: \xff\xfe\r\n\r\n",
              b"NATS/1.0\r\n: empty name\r\nStatus: 408\r\n\r\n",
              b"NATS/1.0 503\r\nNats-Pending-Messages: 5\r\n\r\n"]
    payload = b'{"id": "raw", "amount": 2}'
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true}\r\n')
        for index, block in enumerate(blocks):
            writer.write(b"HPUB poison.order.raw%d %d %d\r\n%s%s\r\n" % (
                index, len(block), len(block) + len(payload), block, payload))
        writer.write(b"PING\r\n")
        await writer.drain()
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"PONG")
        js = env.nc.jetstream(timeout=5)
        seqs: set[int] = set()

        async def stored() -> bool:
            seqs.clear()
            for index in range(len(blocks)):
                with contextlib.suppress(nats.js.errors.NotFoundError):
                    msg = await js.get_msg("POISON", subject=f"poison.order.raw{index}")
                    seqs.add(msg.seq)
            return len(seqs) == len(blocks)

        await wait_for(stored, 10, "the stream to store every raw message")
    finally:
        writer.close()
    await wait_for(lambda: seqs <= env.done.keys(), 10, "every raw-header message handled")
    assert not env.task.done()
    await settled_consumer(env.nc, "POISON", "poison", timeout=10)
    env.counts["raw header blocks, handled"] += len(blocks)
    env.scenario, env.sent = "raw-protocol header blocks", len(blocks)


# -- 8. handler failures of every kind -----------------------------------------------------------


class CustomBaseError(BaseException):
    """Not an Exception: a BaseException of the user's own."""


async def _cancelled_elsewhere() -> None:
    future = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


@attrs.frozen
class Expect:
    deliveries: int
    settlement: str  # ack | term
    traced: int  # failures traced
    dead_letter: bool = False
    reason: str | None = None


EXPECTED = {
    "ok": Expect(1, "ack", 0),
    "value": Expect(3, "term", 3, dead_letter=True),
    "keyboard": Expect(3, "term", 3, dead_letter=True),
    "sysexit": Expect(3, "term", 3, dead_letter=True),
    "custom": Expect(3, "term", 3, dead_letter=True),
    "cancelled": Expect(3, "term", 3, dead_letter=True),
    "hang": Expect(3, "term", 3, dead_letter=True),
    "selfack": Expect(1, "ack", 1),
    "selfterm": Expect(1, "term", 1),
    "nak": Expect(3, "ack", 0),
    "term": Expect(1, "term", 0, reason="refused by the handler"),
    "nakforever": Expect(3, "term", 1, dead_letter=True),
}
"""Per kind of handler behaviour: its documented settlement (docs/settlement.md) with
max_deliver 3: exceptions of any kind (BaseException too, cancellation raised by the handler
itself, and timeouts) are nak'ed with backoff, then termed and dead-lettered on delivery 3;
a handler that settled its message itself is not settled again; a Nak on the last delivery
is a failure (termed, dead-lettered), so the server never gives up on a message silently."""


class FailingService(Service):
    stream = "FAIL"
    durable = "fail"
    dead_letter_subject = "dlq.fail"
    max_deliver = 3
    backoff = (0.05,)
    ack_wait = 10.0
    concurrency = 4
    timeout = 30.0

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    @Route("fail.hang.*", timeout=0.3)
    async def hang(self, msg: Msg) -> None:
        self.recorder.write("start", msg.subject, msg.metadata.num_delivered)
        await asyncio.Event().wait()

    @Route("fail.*.*")
    async def fail(self, msg: Msg) -> None:
        kind = msg.subject.split(".")[1]
        delivery = msg.metadata.num_delivered
        self.recorder.write("start", msg.subject, delivery)
        if kind == "value":
            raise ValueError("the handler failed")
        if kind == "keyboard":
            raise KeyboardInterrupt
        if kind == "sysexit":
            raise SystemExit(3)
        if kind == "custom":
            raise CustomBaseError("a BaseException of our own")
        if kind == "cancelled":
            await _cancelled_elsewhere()
        if kind == "selfack":
            await msg.ack()
            raise ValueError("failed after acking")
        if kind == "selfterm":
            await msg.term()
            raise ValueError("failed after terming")
        if kind == "nak" and delivery < 3:
            raise Nak(0.05)
        if kind == "term":
            raise Term("refused by the handler")
        if kind == "nakforever":
            raise Nak(0.05)
        self.recorder.write("done", msg.subject, delivery)


async def test_handler_failures_of_every_kind(nats_server_fresh: NatsServer,
                                              record_dir: Path) -> None:
    """Each kind of failing handler ends in its documented settlement; the loop survives all."""
    per_kind = scaled(2, 10)
    recorder = Recorder(record_dir / "fail.rec", "fail")
    tracer = Tracer()
    terminated: dict[int, str] = {}
    exhausted: set[int] = set()
    dead: dict[int, dict[str, str]] = {}
    began = time.monotonic()
    nc = await connect(nats_server_fresh.url)
    try:
        async def on_terminated(msg: Msg) -> None:
            data = json.loads(msg.data)
            terminated[data["stream_seq"]] = data.get("reason", "")

        async def on_exhausted(msg: Msg) -> None:
            exhausted.add(json.loads(msg.data)["stream_seq"])

        async def on_dead(msg: Msg) -> None:
            dead[int((msg.headers or {})["Amebus-Original-Sequence"])] = msg.headers or {}

        advisory = "$JS.EVENT.ADVISORY.CONSUMER"
        await nc.subscribe(f"{advisory}.MSG_TERMINATED.FAIL.fail", cb=on_terminated)
        await nc.subscribe(f"{advisory}.MAX_DELIVERIES.FAIL.fail", cb=on_exhausted)
        await nc.subscribe("dlq.fail", cb=on_dead)
        await ensure_stream(nc, "FAIL", ["fail.>"])
        await ensure_stream(nc, "DLQ", ["dlq.>"])
        js = nc.jetstream(timeout=10)
        async with serving(FailingService(recorder), nc.jetstream(), ready_within=20,
                           error_tracer=tracer) as task:
            sent: dict[int, str] = {}  # stream sequence -> subject
            for n in range(per_kind):
                for kind in EXPECTED:
                    subject = f"fail.{kind}.n{n}"
                    sent[(await js.publish(subject, b"")).seq] = subject

            def settled(seq: int, subject: str, done: set[str]) -> bool:
                expect = EXPECTED[subject.split(".")[1]]
                if expect.settlement == "term":
                    return seq in terminated
                if expect.traced:
                    return len(tracer.of(seq)) >= expect.traced
                return subject in done

            def finished() -> bool:
                done = read_records(record_dir).done_ids()
                return all(settled(seq, subject, done) for seq, subject in sent.items())

            await wait_for(finished, 30, "every message settled")
            final = (await js.publish("fail.ok.final", b"")).seq
            await wait_for(lambda: "fail.ok.final" in read_records(record_dir).done_ids(), 10,
                           "a good message after all the failures")
            assert not task.done(), "serve() stopped"
            await asyncio.sleep(0.5)  # let stray redeliveries show, if there were any
            info = await nc.jetstream(timeout=5).consumer_info("FAIL", "fail")
    finally:
        await close(nc)
        recorder.close()
    records = read_records(record_dir)
    deliveries: dict[str, int] = {}
    for line in records.lines:
        if line.kind == "start":
            deliveries[line.id] = max(deliveries.get(line.id, 0), line.delivery)
    summary: dict[str, Any] = {}
    for seq, subject in sent.items():
        kind = subject.split(".")[1]
        expect = EXPECTED[kind]
        traced = tracer.of(seq)
        got = {"deliveries": deliveries[subject], "traced": len(traced),
               "dead_letter": seq in dead, "termed": seq in terminated,
               "reason": terminated.get(seq), "exhausted": seq in exhausted}
        summary.setdefault(kind, got)
        assert got["deliveries"] == expect.deliveries, (kind, got)
        assert got["traced"] == expect.traced, (kind, got, traced)
        assert got["dead_letter"] == expect.dead_letter, (kind, got)
        assert got["termed"] == (expect.settlement == "term"), (kind, got)
        assert not got["exhausted"], (kind, got)  # the server never gave up on its own
        if expect.reason is not None:
            assert got["reason"] == expect.reason, (kind, got)
        if expect.dead_letter:  # termed by amebus, which always gives a reason
            assert got["reason"], (kind, got)
        if kind == "hang":
            assert all(isinstance(f.error, HandlerTimeoutError) for f in traced)
        if kind in ("keyboard", "sysexit", "custom", "cancelled"):
            assert all(not isinstance(f.error, Exception) for f in traced)
    assert info.num_pending == 0 and info.num_ack_pending == 0, info
    assert not exhausted
    assert final not in terminated
    Outcome("handler failures of every kind", len(sent) + 1,
            f"{len(EXPECTED) - 1} kinds of failing handler x {per_kind}", 0, 0, [], [],
            time.monotonic() - began,
            {"per_kind": summary, "num_redelivered_left": info.num_redelivered}
            ).report()
