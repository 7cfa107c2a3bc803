"""Batch routes (``Route(Job, batch=Batch(size=..., wait=...))``) against a real nats-server.

Each test keeps a ledger: the ids published, what each handler call received (and on which
delivery), and what the server says afterwards (consumer info, term advisories), so that a
message settled twice, settled wrongly or lost shows as a difference.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from _batch_worker import Job
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import (
    Batch,
    ConfigurationError,
    Failure,
    HandlerTimeoutError,
    Nak,
    Route,
    Service,
    Term,
)
from amebus.batching import Outcome, check_batch, outcomes_of, pull_batch
from amebus.testing import NatsServer, ServiceHarness

TERMINATED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"


class Tracer:
    """An ErrorTracer keeping every Failure (amebus decides)."""

    def __init__(self) -> None:
        self.failures: list[Failure] = []

    def trace(self, failure: Failure) -> None:
        self.failures.append(failure)


async def publish(js: JetStreamContext, space: Space, count: int) -> list[int]:
    """Create the test's stream (once) and publish jobs 0 .. count - 1; their ids."""
    await stream(js, space)
    ids = list(range(count))
    for job_id in ids:
        await Job(ns=space.prefix, job_id=job_id).publish(js)
    return ids


async def stream(js: JetStreamContext, space: Space) -> None:
    await js.add_stream(name=space.stream, subjects=[space.subject(">")])


async def terms(nc: Client, space: Space) -> list[dict[str, Any]]:
    """The term advisories of this test's consumer, collected from now on (a list that fills)."""
    seen: list[dict[str, Any]] = []

    async def on(msg: Msg) -> None:
        data = json.loads(msg.data)
        if data.get("consumer") == space.durable:
            seen.append(data)

    await nc.subscribe(f"{TERMINATED}.{space.stream}.{space.durable}", cb=on)
    return seen


def deliveries(msgs: list[Msg]) -> list[tuple[int, int]]:
    """(job id, delivery count) of each message of a batch, in the order received."""
    return [(json.loads(m.data)["job_id"], m.metadata.num_delivered) for m in msgs]


# -- per-item outcomes --------------------------------------------------------------------------


async def test_each_item_settles_by_its_own_outcome(js: JetStreamContext, nc: Client,
                                                    space: Space) -> None:
    """Rule: ``None`` acks the item, ``Nak(delay)`` redelivers it after the delay, ``Term``
    drops it for good; the other items of the batch are not affected."""
    calls: list[tuple[float, list[int]]] = []
    seen: Counter[int] = Counter()

    class Jobs(Service):
        @Route(Job, batch=Batch(size=6, wait=5.0))
        async def jobs(self, jobs: list[Job]) -> list[Outcome]:
            calls.append((time.monotonic(), [j.job_id for j in jobs]))
            outcomes: list[Outcome] = []
            for job in jobs:
                seen[job.job_id] += 1
                kind = job.job_id % 3
                if kind == 1 and seen[job.job_id] == 1:
                    outcomes.append(Nak(delay=0.5))
                elif kind == 2:
                    outcomes.append(Term(f"job {job.job_id} is refused"))
                else:
                    outcomes.append(None)
            return outcomes

    termed = await terms(nc, space)
    ids = await publish(js, space, 6)
    async with serving(Jobs(), js, **space.options(max_deliver=5)):
        info = await settled(js, space, last_seq=6, timeout=10)
        await eventually(lambda: len(termed) == 2, what="two term advisories")
    assert calls[0][1] == ids  # the whole batch, in stream order
    assert seen == {0: 1, 3: 1, 1: 2, 4: 2, 2: 1, 5: 1}  # acked once, nak'ed twice, termed once
    assert calls[1][1] == [1, 4]  # only the nak'ed items came back
    assert calls[1][0] - calls[0][0] >= 0.45  # after their delay, not at once
    assert sorted(t["stream_seq"] for t in termed) == [3, 6]  # jobs 2 and 5
    assert {t["reason"] for t in termed} == {"job 2 is refused", "job 5 is refused"}
    assert info.num_ack_pending == 0


async def test_a_raise_fails_every_item_and_each_is_retried(js: JetStreamContext,
                                                            space: Space) -> None:
    """Rule: a handler that raises fails the whole batch the ordinary way: each item is retried
    with backoff on its own delivery count, then termed at max_deliver."""
    batches: list[list[tuple[int, int]]] = []
    tracer = Tracer()

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=4, wait=0.3))
        async def jobs(self, msgs: list[Msg]) -> None:
            batches.append(deliveries(msgs))
            if len(batches) == 1:
                raise RuntimeError("the warehouse is down")

    ids = await publish(js, space, 4)
    async with serving(Jobs(), js, error_tracer=tracer, **space.options()):
        await settled(js, space, last_seq=4, timeout=10)
    handled = [pair for batch in batches for pair in batch]
    assert sorted(handled) == sorted([(i, 1) for i in ids] + [(i, 2) for i in ids])
    assert [f.stream_seq for f in tracer.failures] == [1, 2, 3, 4]
    assert all(f.stage == "business" and f.decision.action == "nak" for f in tracer.failures)


async def test_a_batch_that_always_raises_is_termed_item_by_item(js: JetStreamContext, nc: Client,
                                                                 space: Space) -> None:
    """Rule: the attempt limit applies to each item by its own count (max_deliver 3); each
    is dead-lettered."""
    seen: Counter[int] = Counter()

    class Jobs(Service):
        @Route(Job, batch=Batch(size=3, wait=0.2))
        async def jobs(self, jobs: list[Job]) -> None:
            seen.update(j.job_id for j in jobs)
            raise ValueError("never works")

    termed = await terms(nc, space)
    await publish(js, space, 3)
    dead = space.subject("dead")
    async with serving(Jobs(), js, **space.options(dead_letter_subject=dead)):
        await settled(js, space, last_seq=3, timeout=15)
        await eventually(lambda: len(termed) == 3, what="three term advisories")
    assert seen == {0: 3, 1: 3, 2: 3}
    assert all("failed on attempt 3 of 3" in t["reason"] for t in termed)
    info = await js.stream_info(space.stream, subjects_filter=dead)
    assert info.state.subjects == {dead: 3}  # each one dead-lettered


async def test_a_raise_counts_each_item_by_its_own_deliveries(js: JetStreamContext, nc: Client,
                                                              space: Space) -> None:
    """Rule: in one batch that raises, an item on its last attempt is termed and the fresh
    items beside it are retried (max_deliver 2)."""
    batches: list[list[tuple[int, int]]] = []

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=3, wait=1.0))
        async def jobs(self, msgs: list[Msg]) -> list[Outcome]:
            batches.append(deliveries(msgs))
            if len(batches) == 1:  # jobs 3 and 4 arrive while job 0 waits for redelivery
                for job_id in (3, 4):
                    await Job(ns=space.prefix, job_id=job_id).publish(js)
                return [Nak(delay=0), None, None]
            if len(batches) == 2:
                raise RuntimeError("the warehouse is down")
            return [None] * len(msgs)

    termed = await terms(nc, space)
    await publish(js, space, 3)
    async with serving(Jobs(), js, **space.options(max_deliver=2)):
        await settled(js, space, last_seq=5, timeout=10)
        await eventually(lambda: len(termed) == 1, what="one term advisory")
    assert batches[0] == [(0, 1), (1, 1), (2, 1)]
    assert sorted(batches[1]) == [(0, 2), (3, 1), (4, 1)]
    assert [sorted(b) for b in batches[2:]] == [[(3, 2), (4, 2)]]  # job 0 is not retried
    assert termed[0]["stream_seq"] == 1 and "attempt 2 of 2" in termed[0]["reason"]


async def test_a_wrong_length_result_fails_every_item(js: JetStreamContext,
                                                      space: Space) -> None:
    """Rule: a result list of the wrong length is the handler's failure for every item, and
    the error tracer hears why."""
    batches: list[list[tuple[int, int]]] = []
    tracer = Tracer()

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=3, wait=0.3))
        async def jobs(self, msgs: list[Msg]) -> list[Outcome] | None:
            batches.append(deliveries(msgs))
            return [None] if len(batches) == 1 else None

    await publish(js, space, 3)
    async with serving(Jobs(), js, error_tracer=tracer, **space.options()):
        await settled(js, space, last_seq=3, timeout=10)
    assert batches[0] == [(0, 1), (1, 1), (2, 1)]
    assert sorted(p for b in batches[1:] for p in b) == [(0, 2), (1, 2), (2, 2)]
    assert len(tracer.failures) == 3
    for failure in tracer.failures:
        assert isinstance(failure.error, ValueError)
        assert "returned 1 outcome(s) for 3 message(s)" in str(failure.error)


async def test_a_batch_past_its_timeout_fails_every_item(js: JetStreamContext,
                                                         space: Space) -> None:
    """Rule: the route's timeout bounds the whole handler call; past it, every item fails as
    ``HandlerTimeoutError`` and is retried."""
    batches: list[list[tuple[int, int]]] = []
    tracer = Tracer()

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=3, wait=0.3), timeout=0.3)
        async def jobs(self, msgs: list[Msg]) -> None:
            batches.append(deliveries(msgs))
            if len(batches) == 1:
                await asyncio.sleep(30)

    await publish(js, space, 3)
    async with serving(Jobs(), js, error_tracer=tracer, **space.options()):
        await settled(js, space, last_seq=3, timeout=10)
    assert [sorted(b) for b in batches] == [[(0, 1), (1, 1), (2, 1)], [(0, 2), (1, 2), (2, 2)]]
    assert [type(f.error) for f in tracer.failures] == [HandlerTimeoutError] * 3


async def test_an_item_that_does_not_decode_is_settled_alone(js: JetStreamContext,
                                                             space: Space) -> None:
    """Rule: an item that fails to decode is termed on its own and never reaches the handler."""
    got: list[list[int]] = []
    tracer = Tracer()

    class Jobs(Service):
        @Route(Job, batch=Batch(size=3, wait=0.3))
        async def jobs(self, jobs: list[Job]) -> None:
            got.append([j.job_id for j in jobs])

    await stream(js, space)
    await Job(ns=space.prefix, job_id=0).publish(js)
    await js.publish(space.subject("job", "1"), b'{"ns": "x"}')  # job_id missing
    await Job(ns=space.prefix, job_id=2).publish(js)
    async with serving(Jobs(), js, error_tracer=tracer, **space.options()):
        await settled(js, space, last_seq=3, timeout=10)
    assert got == [[0, 2]]
    assert [(f.stream_seq, f.stage, f.decision.action) for f in tracer.failures] == [
        (2, "pre-process", "term")]


# -- collecting ---------------------------------------------------------------------------------


async def test_a_batch_runs_once_it_holds_size_messages(js: JetStreamContext,
                                                        space: Space) -> None:
    """Rule: a batch runs as soon as it holds ``size`` messages (its wait is never reached)."""
    got: list[list[int]] = []

    class Jobs(Service):
        @Route(Job, batch=Batch(size=5, wait=600.0))
        async def jobs(self, jobs: list[Job]) -> None:
            got.append([j.job_id for j in jobs])

    ids = await publish(js, space, 10)
    async with serving(Jobs(), js, **space.options()):
        await settled(js, space, last_seq=10, timeout=10)
    assert got == [ids[:5], ids[5:]]


async def test_a_batch_runs_once_its_oldest_waited(js: JetStreamContext, space: Space) -> None:
    """Rule: a batch that does not fill runs with what it has once its oldest message waited
    ``wait`` seconds."""
    got: list[list[int]] = []

    class Jobs(Service):
        @Route(Job, batch=Batch(size=100, wait=0.3))
        async def jobs(self, jobs: list[Job]) -> None:
            got.append([j.job_id for j in jobs])

    ids = await publish(js, space, 3)
    async with serving(Jobs(), js, **space.options()):
        await settled(js, space, last_seq=3, timeout=10)
    assert got == [ids]


async def test_shutdown_gives_a_collecting_batch_back(js: JetStreamContext,
                                                      space: Space) -> None:
    """Rule: messages still collecting when serving stops are given back (nak'ed, uncounted)
    and are redelivered to the next instance; none is lost or handled by the first."""
    got: list[list[tuple[int, int]]] = []

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=100, wait=600.0))
        async def jobs(self, msgs: list[Msg]) -> None:
            got.append(deliveries(msgs))

    ids = await publish(js, space, 3)
    service = Jobs()
    async with serving(service, js, **space.options(ack_wait=30.0)):
        await eventually(lambda: service.stats.buffered == 3, what="three collected")
    assert got == []  # the first instance never ran them

    class Later(Jobs):
        @Route(space.subject("job", "*"), batch=Batch(size=100, wait=0.2))
        async def jobs(self, msgs: list[Msg]) -> None:
            got.append(deliveries(msgs))

    async with serving(Later(), js, **space.options(ack_wait=30.0)):
        await settled(js, space, last_seq=3, timeout=10)  # given back: not after ack_wait
    assert [sorted(batch) for batch in got] == [[(i, 2) for i in ids]]


async def test_shutdown_gives_a_running_batch_back_after_shutdown_timeout(
        js: JetStreamContext, space: Space) -> None:
    """Rule: a batch still running when ``shutdown_timeout`` ends is cancelled and each of its
    messages given back; the next instance gets them all."""
    got: list[list[tuple[int, int]]] = []
    started = asyncio.Event()

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=3, wait=600.0))
        async def jobs(self, msgs: list[Msg]) -> None:
            got.append(deliveries(msgs))
            started.set()
            if len(got) == 1:
                await asyncio.sleep(60)

    ids = await publish(js, space, 3)
    async with serving(Jobs(), js, **space.options(ack_wait=30.0, shutdown_timeout=0.5)):
        await asyncio.wait_for(started.wait(), 10)
    async with serving(Jobs(), js, **space.options(ack_wait=30.0)):
        await settled(js, space, last_seq=3, timeout=10)  # given back: not after ack_wait
    assert [sorted(b) for b in got] == [[(i, 1) for i in ids], [(i, 2) for i in ids]]


async def test_in_progress_signals_keep_a_long_batch_alive(js: JetStreamContext,
                                                           space: Space) -> None:
    """Rule: while a batch collects and while its handler runs past ``ack_wait``, every item
    gets in-progress signals: none is redelivered."""
    got: list[list[tuple[int, int]]] = []

    class Jobs(Service):
        @Route(space.subject("job", "*"), batch=Batch(size=4, wait=2.5))
        async def jobs(self, msgs: list[Msg]) -> None:
            got.append(deliveries(msgs))
            await asyncio.sleep(2.5)

    await publish(js, space, 3)
    async with serving(Jobs(), js, **space.options(ack_wait=1.0)):
        await settled(js, space, last_seq=3, timeout=15)
    assert got == [[(0, 1), (1, 1), (2, 1)]]  # collected 2.5 s, ran 2.5 s: ack_wait is 1 s


# -- a crash ------------------------------------------------------------------------------------


async def test_a_process_killed_mid_batch_loses_nothing(
        js: JetStreamContext, nats_server: NatsServer, space: Space, tmp_path: Path) -> None:
    """Rule: kill -9 of the serving process while a batch runs loses nothing: every id is
    handled by a batch that completed, before the kill or after a restart."""
    record = tmp_path / "record"
    ids = await publish(js, space, 40)
    worker = Path(__file__).with_name("_batch_worker.py")
    proc = subprocess.Popen(
        [sys.executable, str(worker), nats_server.url, space.stream, space.durable,
         space.prefix, str(record), "3"], env={**os.environ, "PYTHONPATH": str(worker.parent)})
    try:
        def lines(kind: str) -> list[list[int]]:
            text = record.read_text() if record.exists() else ""
            return [[int(x) for x in line.split()[1:]] for line in text.splitlines()
                    if line.startswith(kind + " ")]

        await eventually(lambda: len(lines("begin")) == 3, timeout=20, what="third batch begun")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    hung = lines("begin")[2]
    done_before = {i for batch in lines("done") for i in batch}
    assert hung and not set(hung) & done_before  # killed while that batch ran
    after: list[int] = []

    class Restarted(Service):
        @Route(Job, batch=Batch(size=10, wait=0.2))
        async def jobs(self, jobs: list[Job]) -> None:
            after.extend(j.job_id for j in jobs)

    async with serving(Restarted(), js, **space.options(max_deliver=5)):
        await settled(js, space, last_seq=len(ids), timeout=20)
    assert done_before | set(after) == set(ids)  # nothing lost
    assert set(hung) <= set(after)  # the batch that was running came back


# -- declaration --------------------------------------------------------------------------------


class TestDeclaration:
    """Rule: a batch route that cannot work is refused when the class is made, saying the fix."""

    @pytest.mark.parametrize(("kwargs", "text"), [
        ({"size": 0}, "size=0"), ({"size": True}, "size=True"), ({"size": 2.5}, "size=2.5"),
        ({"wait": 0}, "wait=0"), ({"wait": float("inf")}, "wait=inf"), ({"wait": "1"}, "'1'"),
    ])
    def test_bad_batch_values(self, kwargs: dict[str, Any], text: str) -> None:
        with pytest.raises(ConfigurationError, match=text):
            Batch(**kwargs)

    def test_an_int_is_the_size(self) -> None:
        assert check_batch(50, "here") == Batch(size=50, wait=0.5)

    @pytest.mark.parametrize(("value", "fix"), [
        ((10, 0.5), r"Batch\(size=10, wait=0.5\)"), ("10", r"Batch\(size=100, wait=0.5\)"),
        (0, "size=0"),
    ])
    def test_bad_batch_forms(self, value: Any, fix: str) -> None:
        with pytest.raises(ConfigurationError, match=fix):
            Route("a.b", print, batch=value)

    def test_the_handler_must_take_a_list(self) -> None:
        with pytest.raises(ConfigurationError, match=r"annotate it list\[Job\]"):
            class Wrong(Service):
                @Route(Job, batch=10)
                async def jobs(self, job: Job) -> None: ...

    def test_the_handler_takes_one_argument(self) -> None:
        with pytest.raises(ConfigurationError, match="a batch handler takes one"):
            class Wrong(Service):
                @Route(Job, batch=10)
                async def jobs(self, jobs: list[Job], msg: Msg) -> None: ...

    def test_a_list_handler_without_batch_is_told_about_batch(self) -> None:
        with pytest.raises(ConfigurationError, match=r"batch=Batch"):
            class Wrong(Service):
                @Route(Job)
                async def jobs(self, jobs: list[Job]) -> None: ...

    def test_a_batch_above_max_ack_pending(self) -> None:
        with pytest.raises(ConfigurationError, match="batch size is 100 but max_ack_pending=50"):
            class Wrong(Service):
                max_ack_pending = 50
                jobs = Route(Job, print, batch=100)

    def test_no_idempotent_batch(self) -> None:
        with pytest.raises(ConfigurationError, match="cannot be idempotent"):
            Route(Job, print, batch=10, idempotent=True)

    def test_the_pull_batch_holds_two_batches(self) -> None:
        assert pull_batch("S", [Batch(size=300), None], 512, 1000) == 600
        assert pull_batch("S", [Batch(size=300)], 512, 400) == 512
        assert pull_batch("S", [None], 7, 1000) == 7
        with pytest.raises(ConfigurationError, match="max_ack_pending=50"):
            pull_batch("S", [Batch(size=100)], 512, 50)

    def test_outcome_lists(self) -> None:
        nak = Nak(delay=1)
        assert outcomes_of(None, 2, "h") == [None, None]
        assert outcomes_of((nak, None), 2, "h") == [nak, None]
        with pytest.raises(TypeError, match="returned 'yes' as outcome 1"):
            outcomes_of([None, "yes"], 2, "h")
        with pytest.raises(TypeError, match="returned 3"):
            outcomes_of(3, 2, "h")


class TestHarness:
    """Rule: in the in-memory harness a fed message runs as a batch of one when the feed ends."""

    async def test_outcomes_in_memory(self) -> None:
        class Jobs(Service):
            @Route(Job, batch=Batch(size=10, wait=600.0))
            async def jobs(self, jobs: list[Job]) -> list[Outcome]:
                return [Nak(delay=3) if j.job_id == 1 else Term("no") if j.job_id == 2
                        else None for j in jobs]

        harness = ServiceHarness(Jobs())
        decisions = [(await harness.feed(Job(ns="t", job_id=i))).decision for i in range(3)]
        assert [(d.action, d.delay) for d in decisions if d is not None] == [
            ("ack", 0.0), ("nak", 3.0), ("term", 0.0)]

    async def test_a_sync_handler_object(self) -> None:
        class Writer:
            def process(self, jobs: list[Job]) -> list[Outcome]:
                return [Term("odd") if j.job_id % 2 else None for j in jobs]

        class Jobs(Service):
            jobs = Route(Job, Writer(), batch=2)

        harness = ServiceHarness(Jobs())
        decisions = [(await harness.feed(Job(ns="t", job_id=i))).decision for i in range(2)]
        assert [d.action for d in decisions if d is not None] == ["ack", "term"]
