"""Deliveries spent by operations, not by failures (issue 10): rolling restarts, a crash loop
on one poison message, a durable made elsewhere with a server-side backoff, an old server,
and the backstop for whatever the server still gives up on.

Each scenario keeps the independent ledger: ids published vs ids whose handler finished (the
record files) vs ids in the dead-letter stream, plus the server's MAX_DELIVERIES advisories
(a core subscription for the whole test). A message is lost when it is in none of them.
Short form by default; ``AMEBUS_RELIABILITY=full`` for the issue's figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from _scenario import (
    DURABLE,
    STREAM,
    Job,
    JobService,
    Outcome,
    Recorder,
    WorkerProcess,
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
)
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from amebus import Route, Service
from amebus.testing.server import NatsServer

DEAD = "dead.rel"
DLQ = "DLQ"


@attrs.define
class Ledger:
    """The server's side of the ledger: dead-letter copies and MAX_DELIVERIES advisories."""

    nc: Client
    advisories: list[dict[str, Any]] = attrs.Factory(list)

    async def dead_lettered(self) -> dict[str, dict[str, str]]:
        """Dead-letter copies by job id: their headers."""
        js = self.nc.jetstream()
        info = await js.stream_info(DLQ)
        out: dict[str, dict[str, str]] = {}
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            raw = await js.get_msg(DLQ, seq)
            job_id = json.loads(raw.data or b"{}").get("id", f"?{seq}")
            out[job_id] = dict(raw.headers or {})
        return out

    async def check(self, ids: list[str], directory: Path, scenario: str, faults: str,
                    started: float, **extra: Any) -> Outcome:
        """Tally handled / dead-lettered / lost / duplicates; report and return them."""
        records = read_records(directory)
        dead = await self.dead_lettered()
        handled = records.done_ids() & set(ids)
        lost_ids = set(ids) - handled - dead.keys()
        _, duplicates, _ = tally(handled, records)
        outcome = Outcome(scenario=scenario, messages=len(ids), faults=faults,
                          lost=len(lost_ids), duplicates=duplicates,
                          seconds=time.monotonic() - started,
                          extra={"handled": len(handled), "dead_lettered": len(dead),
                                 "advisories": len(self.advisories), **extra})
        outcome.report()
        assert not lost_ids, f"{len(lost_ids)} lost, e.g. {sorted(lost_ids)[:10]}"
        return outcome


@pytest.fixture
async def server() -> AsyncIterator[NatsServer]:
    async with NatsServer() as srv:
        yield srv


@pytest.fixture
async def ledger(server: NatsServer) -> AsyncIterator[Ledger]:
    nc = await connect(server.url)
    book = Ledger(nc)

    async def on_advisory(msg: Any) -> None:
        book.advisories.append(json.loads(msg.data))

    await nc.subscribe("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>", cb=on_advisory)
    await ensure_stream(nc)
    await nc.jetstream().add_stream(name=DLQ, subjects=["dead.>"])
    try:
        yield book
    finally:
        await close(nc)


@pytest.fixture
def recorder(record_dir: Path) -> Iterator[Recorder]:
    rec = Recorder(record_dir / "inproc.rec", "inproc")
    JobService.recorder = rec
    yield rec
    JobService.recorder = None
    rec.close()


async def _serve_for(nc: Client, seconds: float, **options: Any) -> None:
    """One short-lived instance: start, serve ``seconds`` (the fault), cancel as documented."""
    ready = asyncio.Event()
    task = asyncio.create_task(JobService().serve(nc.jetstream(), ready=ready, **options))
    await asyncio.wait_for(ready.wait(), 10)
    await asyncio.sleep(seconds)  # the scenario: an instance that lives this long
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@contextlib.asynccontextmanager
async def _serving(nc: Client, **options: Any) -> AsyncIterator[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(JobService().serve(nc.jetstream(), ready=ready, **options))
    await asyncio.wait_for(ready.wait(), 10)
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _all_accounted(ids: list[str], directory: Path, ledger: Ledger) -> bool:
    done = read_records(directory).done_ids()
    missing = set(ids) - done
    return not missing or not (missing - (await ledger.dead_lettered()).keys())


# -- 1. rolling restarts ------------------------------------------------------------------------


async def test_rolling_restarts_cost_no_message(server: NatsServer, ledger: Ledger,
                                                recorder: Recorder, record_dir: Path) -> None:
    """Seven short-lived instances (batch 50, each serving 0.2 s), then a long-lived one:
    every stop gives back dozens of prefetched messages, none of which may die of it."""
    ids = job_ids(scaled(100, 100))
    started = time.monotonic()
    await publish_jobs(ledger.nc, ids, sleep=0.05)
    options = {"batch": 50, "ack_wait": 5.0, "dead_letter_subject": DEAD}
    for _ in range(7):
        await _serve_for(ledger.nc, 0.2, **options)
    async with _serving(ledger.nc, **options):
        await wait_for(lambda: _all_accounted(ids, record_dir, ledger), 30, "every id")
        await settled_consumer(ledger.nc)
    outcome = await ledger.check(ids, record_dir, "rolling-restarts", "7 stops, batch 50",
                                 started)
    assert outcome.extra["dead_lettered"] == 0
    assert ledger.advisories == []


async def test_cancels_of_slow_handlers_are_not_counted(
        server: NatsServer, ledger: Ledger, recorder: Recorder, record_dir: Path) -> None:
    """Handlers slower than shutdown_timeout, cancelled by each stop, more times than
    max_deliver: a cancel by amebus is not the handler's failure and is not counted."""
    ids = job_ids(scaled(8, 3000))
    started = time.monotonic()
    await publish_jobs(ledger.nc, ids, sleep=0.3)
    options = {"batch": 8, "concurrency": 4, "ack_wait": 5.0, "max_deliver": 2,
               "shutdown_timeout": 0.05, "dead_letter_subject": DEAD}
    for _ in range(scaled(4, 15)):
        await _serve_for(ledger.nc, 0.1, **options)
    async with _serving(ledger.nc, **{**options, "concurrency": scaled(8, 64)}):
        await wait_for(lambda: _all_accounted(ids, record_dir, ledger), scaled(30, 120),
                       "every id")
        await settled_consumer(ledger.nc)
    outcome = await ledger.check(ids, record_dir, "cancelled-at-shutdown",
                                 f"{scaled(4, 15)} stops cancelling 0.3 s handlers", started)
    assert outcome.extra["dead_lettered"] == 0
    assert ledger.advisories == []


# -- 2. a crash loop on one poison message ------------------------------------------------------


async def test_crash_loop_costs_only_the_poison(
        server: NatsServer, ledger: Ledger, record_dir: Path,
        workers: Callable[..., WorkerProcess]) -> None:
    """One message kills the process; a supervisor restarts it. The poison is dead-lettered
    after max_deliver attempts; every message prefetched alongside it is handled."""
    count, max_deliver, batch = scaled(20, 200), scaled(2, 5), scaled(20, 50)
    ids = job_ids(count)
    poison = ids[0]
    started = time.monotonic()
    await publish_jobs(ledger.nc, ids)
    settings = {"batch": batch, "ack_wait": 1.0, "max_deliver": max_deliver,
                "dead_letter_subject": DEAD}
    crashes = 0
    worker = workers(server.url, "w0", crash_on=[poison], **settings)
    deadline = time.monotonic() + 60
    while not await _all_accounted(ids, record_dir, ledger):
        assert time.monotonic() < deadline, "the crash loop did not settle within 60 s"
        if not worker.running:  # the supervisor: restart what died
            crashes += 1
            worker = workers(server.url, f"w{crashes}", crash_on=[poison], **settings)
        await asyncio.sleep(0.1)
    await settled_consumer(ledger.nc)
    worker.terminate()
    await worker.exited(10)
    outcome = await ledger.check(ids, record_dir, "crash-loop",
                                 f"{crashes} crashes on one poison, batch {batch}", started,
                                 crashes=crashes)
    dead = await ledger.dead_lettered()
    assert set(dead) == {poison}
    assert dead[poison]["Amebus-Error"].startswith("AttemptsExhaustedError")
    assert outcome.extra["handled"] == count - 1
    assert crashes == max_deliver + 1  # the first crash (delivery 1) is not counted
    assert ledger.advisories == []


# -- 4. a durable created elsewhere with a server-side backoff ----------------------------------


async def test_foreign_backoff_is_cleared(server: NatsServer, ledger: Ledger,
                                          recorder: Recorder, record_dir: Path) -> None:
    """Another tool made the durable with backoff [1, 2] (which pins ack_wait to 1 s): amebus
    clears it when told to adopt the durable (``provision='adopt'``: by default a durable
    amebus did not create is refused), so a 3 s handler runs once, kept alive by in-progress
    signals."""
    js = ledger.nc.jetstream()
    await js.add_consumer(STREAM, api.ConsumerConfig(
        durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT, max_deliver=10,
        backoff=[1.0, 2.0]))
    ids = job_ids(1)
    started = time.monotonic()
    await publish_jobs(ledger.nc, ids, sleep=3.0)
    async with _serving(ledger.nc, ack_wait=6.0, dead_letter_subject=DEAD, provision="adopt"):
        info = await js.consumer_info(STREAM, DURABLE)
        assert (info.config.backoff, info.config.ack_wait) == (None, 6.0)
        await wait_for(lambda: _all_accounted(ids, record_dir, ledger), 15, "the job")
        await settled_consumer(ledger.nc)
    await ledger.check(ids, record_dir, "foreign-backoff", "backoff [1, 2] on the durable",
                       started)
    assert len(read_records(record_dir).started()[ids[0]]) == 1  # ran once


# -- the backstop: what the server gives up on is dead-lettered ---------------------------------


async def test_given_up_messages_are_dead_lettered(server: NatsServer, ledger: Ledger,
                                                   recorder: Recorder) -> None:
    """A message the server stops delivering (here: delivered to a foreign client that never
    settles it, until server_max_deliver) gets a dead-letter copy marked ``gave-up``."""
    js = ledger.nc.jetstream()
    options = {"ack_wait": 1.0, "max_deliver": 1, "server_max_deliver": 2,
               "dead_letter_subject": DEAD}
    async with _serving(ledger.nc, **options):
        pass  # binds the durable and creates the advisory stream
    await publish_jobs(ledger.nc, ["g1"])
    sub = await js.pull_subscribe_bind(DURABLE, STREAM)
    for _ in range(2):  # two deliveries, never settled: the server gives up
        [msg] = await sub.fetch(1, timeout=5)
    with contextlib.suppress(TimeoutError):  # a waiting request: the server decides there
        await sub.fetch(1, timeout=3)
    await wait_for(lambda: ledger.advisories, 10, "the MAX_DELIVERIES advisory")
    async with _serving(ledger.nc, **options):
        await wait_for(lambda: _has_dead(ledger), 10, "the gave-up copy")
    dead = await ledger.dead_lettered()
    assert dead["g1"]["Amebus-Stage"] == "gave-up"
    assert dead["g1"]["Amebus-Original-Sequence"] == "1"
    assert "gave up on it after 2 deliveries" in dead["g1"]["Amebus-Error"]
    assert msg.subject == "rel.job.g1"


async def _has_dead(ledger: Ledger) -> bool:
    return bool(await ledger.dead_lettered())


# -- 5. an old server -------------------------------------------------------------------------


async def test_old_server_is_refused() -> None:
    """A server that says it is 2.9.10 is refused at bind, before any JetStream request.

    No 2.9 binary is installable as a wheel, so a loopback stand-in speaks the NATS handshake
    (INFO, then PONG to PING) with that version; everything after it would be a JetStream
    request, which the check must never reach.
    """
    from amebus.errors import ConfigurationError

    requests: list[bytes] = []

    async def stand_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        info = {"server_id": "OLD", "version": "2.9.10", "proto": 1, "max_payload": 1048576,
                "headers": True, "jetstream": True}
        writer.write(f"INFO {json.dumps(info)}\r\n".encode())
        while line := await reader.readline():
            if line.startswith(b"PING"):
                writer.write(b"PONG\r\n")
            elif line.startswith(b"PUB") or line.startswith(b"HPUB"):
                requests.append(line)
            await writer.drain()

    listener = await asyncio.start_server(stand_in, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    nc = await connect(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0)
    try:
        with pytest.raises(ConfigurationError, match=r"nats-server 2\.9\.10 is too old for "
                                                     r"amebus, which needs 2\.10\.4 or newer"):
            await JobService().serve(nc.jetstream())
    finally:
        await nc.close()
        listener.close()
    assert requests == []



# -- 3. a redeploy that adds a route -------------------------------------------------------------


def _routed(*patterns: str, seen: list[str]) -> Service:
    async def handle(msg: Msg) -> None:
        seen.append(msg.data.decode())

    routes = {f"r{i}": Route(p, handle) for i, p in enumerate(patterns)}
    cls = type("Routed", (Service,), {"stream": STREAM, "durable": "routed", **routes})
    return cls()


@pytest.mark.parametrize(("server_filter", "new_routes"),
                         [("routes", "replay"), ("stream", "replay"), ("routes", "skip")])
async def test_added_route_sees_the_stored_backlog(
        server: NatsServer, ledger: Ledger, server_filter: str, new_routes: str,
        caplog: pytest.LogCaptureFixture) -> None:
    """Version 1 handles rel.a.*; version 2 adds rel.b.*. The rel.b messages stored while
    version 1 ran (never delivered to a filtered durable, acked unhandled by an unfiltered
    one) are replayed once (or skipped when asked), and the count is logged."""
    js = ledger.nc.jetstream()
    count = scaled(10, 1000)
    for i in range(count):
        await js.publish(f"rel.a.{i}", f"a{i}".encode())
        await js.publish(f"rel.b.{i}", f"b{i}".encode())
    seen: list[str] = []
    options = {"server_filter": server_filter, "new_routes": new_routes, "ack_wait": 5.0}
    ready = asyncio.Event()
    task = asyncio.create_task(_routed("rel.a.*", seen=seen).serve(js, ready=ready, **options))
    await wait_for(lambda: len(seen) == count, 20, "version 1 handling rel.a")
    await settled_consumer(ledger.nc, STREAM, "routed")
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await js.publish("rel.b.new", b"bnew")  # after version 1: the durable delivers it anyway
    expected = {f"b{i}" for i in range(count)} if new_routes == "replay" else set()
    seen.clear()
    with caplog.at_level(logging.WARNING, logger="amebus"):
        ready = asyncio.Event()
        task = asyncio.create_task(
            _routed("rel.a.*", "rel.b.*", seen=seen).serve(js, ready=ready, **options))
        await wait_for(lambda: task.done() or set(seen) >= expected | {"bnew"}, 20,
                       "the rel.b backlog")
        assert not task.done(), task.exception()
        await wait_for(lambda: _gone(js, "routed_catchup"), 10, "the catch-up deleted")
        await settled_consumer(ledger.nc, STREAM, "routed")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    Outcome(scenario=f"added-route-{server_filter}-{new_routes}", messages=count + 1,
            faults="a redeploy adding rel.b.*", lost=len((expected | {"bnew"}) - set(seen)),
            duplicates=len(seen) - len(set(seen)),
            extra={"handled": len(set(seen)), "skipped": count - len(expected)}).report()
    assert set(seen) == expected | {"bnew"}  # nothing of rel.a again
    # A filtered durable's position is where its last pull request left it: rel.b.new, stored
    # after version 1 stopped pulling, comes from the durable and may come from the replay too.
    assert [i for i in seen if seen.count(i) > 1] in ([], ["bnew", "bnew"])
    word = "replayed" if new_routes == "replay" else "skipped"
    counts = {f"{n} stored message(s)" for n in (count, count + 1)}
    assert any(any(c in r.getMessage() for c in counts) and word in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


async def _gone(js: Any, name: str) -> bool:
    try:
        await js.consumer_info(STREAM, name)
    except NotFoundError:
        return True
    return False


# -- the attempt bucket unavailable ---------------------------------------------------------------


async def test_unusable_attempt_bucket_falls_back_to_deliveries(
        server: NatsServer, ledger: Ledger, recorder: Recorder, record_dir: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    """A stream in the bucket's place that is no key-value bucket: serving goes on, attempts
    are counted by the server's deliveries (WARNING), and the failing message is still
    dead-lettered on its last attempt."""
    js = ledger.nc.jetstream()
    await js.add_stream(name="KV_amebus_attempts", subjects=["$KV.amebus_attempts.>"])

    class Failing(JobService):
        @Route(Job)
        async def job(self, job: Job, msg: Msg) -> None:
            recorder.write("start", job.id, msg.metadata.num_delivered)
            raise RuntimeError("boom")

    with caplog.at_level(logging.WARNING, logger="amebus"):
        ready = asyncio.Event()
        task = asyncio.create_task(Failing().serve(
            js, ready=ready, max_deliver=2, backoff=(0.05,), dead_letter_subject=DEAD))
        await publish_jobs(ledger.nc, ["f1"])
        await wait_for(lambda: _has_dead(ledger), 10, "the dead-letter copy")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    dead = await ledger.dead_lettered()
    assert dead["f1"]["Amebus-Deliveries"] == "2", dead
    assert [line.delivery for line in read_records(record_dir).started()["f1"]] == [1, 2]
    assert any("attempt bucket amebus_attempts" in r.getMessage() for r in caplog.records)


# -- the server's last delivery is never nak'ed into oblivion -----------------------------------


async def test_stop_on_the_servers_last_delivery_dead_letters(
        server: NatsServer, ledger: Ledger, recorder: Recorder, record_dir: Path) -> None:
    """Serving stops while a message on the server's last delivery runs past
    shutdown_timeout: a nak 0 would make the server give up silently, so it is termed and
    dead-lettered with the reason; the server sends no MAX_DELIVERIES advisory."""
    js = ledger.nc.jetstream()
    options = {"ack_wait": 1.0, "max_deliver": 1, "server_max_deliver": 2,
               "shutdown_timeout": 0.2, "dead_letter_subject": DEAD}
    async with _serving(ledger.nc, **options):
        pass  # binds the durable
    await publish_jobs(ledger.nc, ["s1"], sleep=30.0)
    sub = await js.pull_subscribe_bind(DURABLE, STREAM)
    [first] = await sub.fetch(1, timeout=5)  # delivery 1, never settled
    await sub.unsubscribe()
    async with _serving(ledger.nc, **options):  # delivery 2 of 2 after ack_wait
        await wait_for(lambda: "s1" in read_records(record_dir).started(), 10, "delivery 2")
    dead = await ledger.dead_lettered()
    assert dead["s1"]["Amebus-Deliveries"] == "2"
    assert dead["s1"]["Amebus-Stage"] == "business"
    assert dead["s1"]["Amebus-Error"].startswith(
        "RuntimeError: serving stopped before it was handled, on the server's last delivery "
        "(2 of 2)")
    info = await js.consumer_info(STREAM, DURABLE)
    assert (info.num_ack_pending, info.num_pending) == (0, 0)
    assert ledger.advisories == []
    assert first.metadata.num_delivered == 1
