"""Scenarios 1, 3 and 4: serving processes killed, stopped, and run side by side on one durable."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _scenario import (
    Outcome,
    WorkerProcess,
    close,
    connect,
    count_done,
    ensure_stream,
    job_ids,
    publish_jobs,
    read_records,
    scaled,
    settled_consumer,
    stalls,
    tally,
    wait_for,
    wait_until_done,
)

from amebus.testing import NatsServer

pytestmark = pytest.mark.reliability

StartWorker = Callable[..., WorkerProcess]


async def test_consumer_killed_repeatedly(nats_server_fresh: NatsServer, record_dir: Path,
                                          workers: StartWorker) -> None:
    """SIGKILL the only serving process again and again mid-stream; restart it each time."""
    count, kills = scaled(2_000, 10_000), scaled(2, 6)
    ids = job_ids(count)
    settings = {"ack_wait": 2.0, "concurrency": 8, "batch": 128}
    began = time.monotonic()
    nc = await connect(nats_server_fresh.url)
    try:
        await ensure_stream(nc)
        await publish_jobs(nc, ids, sleep=0.001)
        worker = await workers(nats_server_fresh.url, "w0", **settings).ready()
        killed_at: list[float] = []
        for kill in range(1, kills + 1):
            threshold = count * kill // (kills + 1)
            await wait_for(lambda t=threshold: count_done(record_dir) >= t, 60,
                           f"{threshold} completions before kill {kill}", poll=0.01)
            worker.kill()
            killed_at.append(time.time())
            worker = await workers(nats_server_fresh.url, f"w{kill}", **settings).ready()
        records = await wait_until_done(record_dir, ids, timeout=60)
        info = await settled_consumer(nc, timeout=15)
    finally:
        await close(nc)
    lost, duplicates, _ = tally(ids, records)
    stalled = stalls(records, killed_at)
    recovered = [records.orphans_done_in(f"w{n}", t) or 0.0 for n, t in enumerate(killed_at)]
    Outcome("consumer killed (SIGKILL, restart)", count, f"{kills} x SIGKILL of the worker",
            lost, duplicates, stalled, recovered, time.monotonic() - began,
            {"redelivered_ids": records.redelivered(), "by_process": records.by_label()}
            ).report()
    assert lost == 0
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_sigterm_gives_prefetched_messages_back_at_once(
        nats_server_fresh: NatsServer, record_dir: Path, workers: StartWorker) -> None:
    """SIGTERM with handlers running and messages buffered: the stop takes about
    ``shutdown_timeout``, and everything pulled reaches a second instance long before
    ``ack_wait`` (30 s)."""
    count = scaled(200, 1_000)
    ids = job_ids(count)
    slow = set(ids[3::10])  # these outlive shutdown_timeout: cancelled, then nak'ed
    shutdown_timeout = 1.5
    settings = {"ack_wait": 30.0, "concurrency": 4, "batch": 64,
                "shutdown_timeout": shutdown_timeout}
    began = time.monotonic()
    nc = await connect(nats_server_fresh.url)
    try:
        await ensure_stream(nc)
        await publish_jobs(nc, ids, sleep=lambda i: 5.0 if i in slow else 0.02)
        first = await workers(nats_server_fresh.url, "first", **settings).ready()

        def busy() -> bool:
            status = first.status()
            started = read_records(record_dir).started()
            return (status.get("in_flight", 0) >= 2 and status.get("buffered", 0) >= 8
                    and any(i in started for i in slow))

        await wait_for(busy, 20, "handlers running (a slow one among them) and a full buffer")
        held = first.status()
        stop_at = time.time()
        first.terminate()
        assert await first.exited(shutdown_timeout + 5) == 0, first.log_tail()
        stopped_in = first.status().get("stopped_in")
        exited_in = time.time() - stop_at
        second_at = time.time()
        await workers(nats_server_fresh.url, "second", **{**settings, "concurrency": 64}).ready()
        second_ready_in = time.time() - second_at
        records = await wait_until_done(record_dir, ids, timeout=60)
        finished_in = max(line.at for line in records.lines) - stop_at
        info = await settled_consumer(nc, timeout=10)
    finally:
        await close(nc)
    returned = {i: lines[0] for i, lines in records.started().items()
                if any(line.label == "second" and line.delivery >= 2 for line in lines)}
    second_starts = [line.at for lines in records.started().values() for line in lines
                     if line.label == "second" and line.delivery >= 2]
    lost, duplicates, _ = tally(ids, records)
    redelivered_within = max(second_starts) - second_at if second_starts else None
    Outcome("graceful stop (SIGTERM)", count,
            f"SIGTERM with {held.get('in_flight')} running, {held.get('buffered')} buffered",
            lost, duplicates, [second_ready_in], [redelivered_within or 0.0],
            time.monotonic() - began,
            {"stopped_in": stopped_in, "process_exited_in": round(exited_in, 3),
             "shutdown_timeout": shutdown_timeout, "redelivered_to_second": len(returned),
             "all_done_after_sigterm": round(finished_in, 2),
             "redelivered_ids": records.redelivered()}).report()
    assert lost == 0
    assert stopped_in is not None and stopped_in <= shutdown_timeout + 1.0
    assert returned  # what the first instance held reached the second one...
    assert redelivered_within is not None and redelivered_within < 5.0  # ...at once, and
    assert finished_in < settings["ack_wait"]  # nothing waited out ack_wait (30 s)
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_three_instances_one_killed(nats_server_fresh: NatsServer, record_dir: Path,
                                          workers: StartWorker) -> None:
    """Three processes share one durable; one is SIGKILLed midway; the other two finish."""
    count = scaled(3_000, 10_000)
    ids = job_ids(count)
    settings = {"ack_wait": 2.0, "concurrency": 4, "batch": 64}
    began = time.monotonic()
    nc = await connect(nats_server_fresh.url)
    try:
        await ensure_stream(nc)
        await workers(nats_server_fresh.url, "w0", **settings).ready()  # creates the durable
        instances = [workers(nats_server_fresh.url, f"w{n}", **settings) for n in (1, 2)]
        for instance in instances:
            await instance.ready()
        await publish_jobs(nc, ids, sleep=0.002)
        await wait_for(lambda: count_done(record_dir) >= count // 3, 60, "a third done",
                       poll=0.01)
        instances[0].kill()
        killed_at = time.time()
        records = await wait_until_done(record_dir, ids, timeout=90)
        info = await settled_consumer(nc, timeout=15)
    finally:
        await close(nc)
    lost, duplicates, _ = tally(ids, records)
    spread = records.by_label()
    stalled = records.stalled(killed_at)
    recovered = records.orphans_done_in("w1", killed_at) or 0.0
    Outcome("three instances, one killed", count, "1 x SIGKILL of 1 of 3 workers", lost,
            duplicates, [stalled], [recovered], time.monotonic() - began,
            {"by_process": spread, "redelivered_ids": records.redelivered()}).report()
    assert lost == 0
    assert set(spread) == {"w0", "w1", "w2"} and min(spread.values()) > 0, spread
    assert info.num_pending == 0 and info.num_ack_pending == 0
