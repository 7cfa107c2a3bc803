"""Scenarios 2 and 5: the server under a running service is killed (single server, restarted
on its store; and the stream leader of a three-server cluster)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from _scenario import (
    JobService,
    Outcome,
    WorkerProcess,
    close,
    connect,
    consumer_info,
    count_done,
    ensure_stream,
    job_ids,
    publish_jobs,
    scaled,
    settled_consumer,
    stalls,
    tally,
    wait_for,
    wait_until_done,
)
from nats.aio.client import Client
from nats.errors import Error as NatsError

from amebus.testing import NatsCluster, NatsServer

pytestmark = pytest.mark.reliability

StartWorker = Callable[..., WorkerProcess]


async def test_server_killed_and_restarted(nats_server_fresh: NatsServer, record_dir: Path,
                                           workers: StartWorker) -> None:
    """SIGKILL nats-server mid-stream and restart it on the same store, several times; the
    serving process is never restarted and needs no user code to carry on."""
    server = nats_server_fresh
    count, kills = scaled(3_000, 10_000), scaled(2, 5)
    ids = job_ids(count)
    last_chunk = ids[count * kills // (kills + 1):]  # published only after the last restart
    settings = {"ack_wait": 2.0, "concurrency": 8, "batch": 128}
    began = time.monotonic()
    nc = await connect(server.url)
    try:
        await ensure_stream(nc)
        await publish_jobs(nc, ids[:len(ids) - len(last_chunk)], sleep=0.001)
        worker = await workers(server.url, "w", **settings).ready()
        pid = worker.status()["pid"]
        killed_at: list[float] = []
        outages: list[float] = []
        for kill in range(1, kills + 1):
            threshold = count * kill // (kills + 2)
            await wait_for(lambda t=threshold: count_done(record_dir) >= t, 60,
                           f"{threshold} completions before kill {kill}", poll=0.01)
            await server.kill()
            killed_at.append(time.time())
            await server.start()
            outages.append(time.time() - killed_at[-1])
        await wait_for(lambda: nc.is_connected, 10, "the test's client to reconnect")
        await publish_jobs(nc, last_chunk, sleep=0.001)
        records = await wait_until_done(record_dir, ids, timeout=90)
        info = await settled_consumer(nc, timeout=15)
    finally:
        await close(nc)
    assert worker.running and worker.status()["pid"] == pid  # the same process all along
    lost, duplicates, _ = tally(ids, records)
    stalled = stalls(records, killed_at)
    Outcome("server killed (SIGKILL, restart on its store)", count,
            f"{kills} x SIGKILL of nats-server", lost, duplicates, stalled, [],
            time.monotonic() - began,
            {"outage_seconds": [round(o, 3) for o in outages],
             "redelivered_ids": records.redelivered()}).report()
    assert lost == 0
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def test_cluster_leaders_killed(record_dir: Path, workers: StartWorker) -> None:
    """A three-server cluster, a stream with 3 replicas; SIGKILL the stream leader mid-stream,
    then (the first victim restarted and current again) the consumer's leader; in full mode
    both twice. The service carries on through each election and nothing is lost."""
    count = scaled(2_000, 10_000)
    targets = ["stream", "consumer"] * scaled(1, 2)
    ids = job_ids(count)
    settings = {"ack_wait": 2.0, "concurrency": 8, "batch": 128}
    began = time.monotonic()
    async with NatsCluster(3, name="rel") as cluster:
        nc = await connect(cluster.urls)
        try:
            await ensure_stream(nc, replicas=3)
            await workers(cluster.urls, "w", **settings).ready()
            chunk = count // len(targets)  # each kill comes halfway through a fresh chunk
            published = 0
            killed_at: list[float] = []
            killed: list[str] = []
            elected: list[float] = []
            victim: NatsServer | None = None
            for kill, target in enumerate(targets, start=1):
                if victim is not None:  # bring the last victim back, current, before the next
                    await victim.start(timeout=30)
                batch = ids[published:] if kill == len(targets) else ids[published:][:chunk]
                await publish_jobs(nc, batch, sleep=0.003)
                published += len(batch)
                threshold = published - len(batch) // 2
                await wait_for(lambda t=threshold: count_done(record_dir) >= t, 60,
                               f"{threshold} completions before kill {kill}", poll=0.01)
                victim = await _leader(cluster, nc, target)
                killed.append(f"{target} leader {victim.name}")
                await victim.kill()
                killed_at.append(time.time())
                successor = await _leader(cluster, nc, target, timeout=30)
                elected.append(time.time() - killed_at[-1])
                assert successor.name != victim.name
            records = await wait_until_done(record_dir, ids, timeout=120)
            info = await settled_consumer(nc, timeout=30)
        finally:
            await close(nc)
    lost, duplicates, _ = tally(ids, records)
    stalled = stalls(records, killed_at)
    Outcome("cluster: leaders killed (R3)", count,
            f"{len(targets)} x SIGKILL of a leader ({', '.join(targets)})", lost, duplicates,
            stalled, [], time.monotonic() - began,
            {"killed": killed, "new_leader_elected_in": [round(e, 3) for e in elected],
             "redelivered_ids": records.redelivered()}).report()
    assert lost == 0
    assert info.num_pending == 0 and info.num_ack_pending == 0


async def _leader(cluster: NatsCluster, nc: Client, target: str, timeout: float = 10.0
                  ) -> NatsServer:
    """The running server leading the stream, or the durable consumer, waiting out elections."""
    if target == "stream":
        return await cluster.stream_leader(nc, "REL", timeout=timeout)
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(NatsError, TimeoutError, asyncio.TimeoutError):
            info = await asyncio.wait_for(consumer_info(nc), 0.5)
            leader = info.cluster.leader if info.cluster else None
            for server in cluster.servers:
                if server.name == leader and server.running:
                    return server
        if time.monotonic() > deadline:
            msg = f"no running server leads the consumer after {timeout}s"
            raise AssertionError(msg)
        await asyncio.sleep(0.05)


async def test_serve_ends_when_its_connection_is_closed(nats_server_fresh: NatsServer
                                                        ) -> None:
    """A connection closed for good (by the user, or by nats-py after an -ERR such as a
    maximum payload violation) ends ``serve()`` with ``ConnectionError`` within about a
    second, instead of leaving a service that looks alive and does nothing."""
    nc = await connect(nats_server_fresh.url)
    await ensure_stream(nc)
    ready = asyncio.Event()
    task = asyncio.create_task(JobService().serve(nc.jetstream(), ready=ready))
    await asyncio.wait_for(ready.wait(), 10)
    await nc.close()
    done, _ = await asyncio.wait([task], timeout=5)
    assert done, "serve() kept running on a closed connection"
    assert isinstance(task.exception(), ConnectionError), task.exception()
