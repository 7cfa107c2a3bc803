"""A half-open connection against a real nats-server: found and replaced within seconds.

amebus serves through :class:`amebus.testing.TcpProxy` on a connection made by plain
``nats.connect`` at nats-py's defaults (which would notice the dead connection only after 6
minutes), while a producer publishes straight to the server. The proxy then black-holes the
live connection in both directions (no FIN, no RST). Handling must resume within 30 s of
the cut, and the ledger (ids published against ids handled) must show nothing lost;
duplicates (messages settled into the dead connection come back after ``ack_wait``) are
counted and reported. With reconnects off, ``serve()`` must stop with a clear error.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import attrs
import nats
import pytest
from _support import serving
from nats.aio.msg import Msg

from amebus import Route, Service
from amebus.testing import NatsServer, TcpProxy

RESUME_WITHIN = 30.0
FULL = os.environ.get("AMEBUS_RELIABILITY") == "full"


@pytest.fixture
def server() -> Iterator[NatsServer]:
    with NatsServer() as nats_server:
        yield nats_server


@attrs.define
class Ledger:
    published: dict[str, float] = attrs.Factory(dict)  # id -> when
    handled: list[tuple[float, str]] = attrs.Factory(list)  # (when, id)
    done: asyncio.Event = attrs.Factory(asyncio.Event)

    def lost(self) -> set[str]:
        return set(self.published) - {job_id for _, job_id in self.handled}

    def duplicates(self) -> int:
        counts = collections.Counter(job_id for _, job_id in self.handled)
        return sum(count - 1 for count in counts.values())

    def resumed_at(self, cut: float) -> float | None:
        """When the first message published a second after the cut was handled: it cannot
        have been pulled before the cut, so it came over a new connection."""
        for when, job_id in self.handled:
            if self.published.get(job_id, 0.0) > cut + 1.0:
                return when
        return None


def _service(ledger: Ledger, pause: float) -> Service:
    async def handle(msg: Msg) -> None:
        if pause:
            await asyncio.sleep(pause)
        ledger.handled.append((time.monotonic(), msg.data.decode()))
        if not ledger.lost():
            ledger.done.set()

    class Jobs(Service):
        stream = "JOBS"
        durable = "jobs"
        stream_subjects = ("job.>",)
        ack_wait = 5.0
        max_deliver = -1
        jobs = Route("job.>", handle)

    return Jobs()


async def _publish(server: NatsServer, ledger: Ledger, ids: list[str], rate: float) -> None:
    producer = await nats.connect(server.url)
    js = producer.jetstream()
    try:
        for job_id in ids:
            await js.publish(f"job.{job_id}", job_id.encode())
            ledger.published[job_id] = time.monotonic()
            if rate:
                await asyncio.sleep(1 / rate)
    finally:
        await producer.close()


async def _quiet(_: Exception) -> None:
    pass


async def _cut_and_recover(server: NatsServer, *, count: int, rate: float, concurrency: int,
                           pause: float, cut_at: int) -> tuple[Ledger, Service, float]:
    """Serve through the proxy; black-hole it once ``cut_at`` messages were handled."""
    ledger = Ledger()
    async with TcpProxy(server.port) as proxy:
        nc = await nats.connect(proxy.url, error_cb=_quiet)  # nats-py's defaults otherwise
        service = _service(ledger, pause)
        try:
            async with serving(service, nc.jetstream(), concurrency=concurrency):
                producer = asyncio.create_task(
                    _publish(server, ledger, [f"j{i:05d}" for i in range(count)], rate))
                while len(ledger.handled) < cut_at:
                    await asyncio.sleep(0.01)
                assert service.stats.connected
                assert proxy.blackhole() == 1
                cut = time.monotonic()
                while service.stats.dead_connections == 0:
                    await asyncio.sleep(0.05)
                assert not service.stats.connected  # found dead: not ready until replaced
                await producer
                await asyncio.wait_for(ledger.done.wait(), timeout=90)
        finally:
            await nc.close()
    return ledger, service, cut


async def test_half_open_connection_is_replaced(server: NatsServer,
                                                caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="amebus")
    ledger, service, cut = await _cut_and_recover(server, count=500, rate=20, concurrency=1,
                                                  pause=0.0, cut_at=60)
    resumed = ledger.resumed_at(cut)
    assert resumed is not None
    print(f"resumed {resumed - cut:.1f}s after the cut; {len(ledger.published)} published, "
          f"{ledger.duplicates()} duplicates, 0 lost")
    assert resumed - cut < RESUME_WITHIN
    assert not ledger.lost()
    assert service.stats.dead_connections == 1
    messages = caplog.text
    assert "the connection to NATS is dead" in messages
    assert "handling resumes" in messages


@pytest.mark.reliability
async def test_half_open_during_a_burst_concurrency_8(server: NatsServer) -> None:
    count = 3000 if FULL else 1000
    ledger, service, cut = await _cut_and_recover(server, count=count, rate=0, concurrency=8,
                                                  pause=0.02, cut_at=count // 5)
    print(f"burst: {len(ledger.published)} published, {ledger.duplicates()} duplicates, "
          f"0 lost, {service.stats.dead_connections} dead connection(s), all handled "
          f"{ledger.handled[-1][0] - cut:.1f}s after the cut")
    assert not ledger.lost()
    assert service.stats.dead_connections >= 1


async def test_reconnects_off_stops_serve_with_a_clear_error(server: NatsServer) -> None:
    ledger = Ledger()
    async with TcpProxy(server.port) as proxy:
        nc = await nats.connect(proxy.url, allow_reconnect=False, error_cb=_quiet)
        try:
            service = _service(ledger, 0.0)
            async with serving(service, nc.jetstream(), reraise=False) as task:
                proxy.blackhole()
                await asyncio.wait({task}, timeout=40)
                assert task.done(), "serve() still running on a dead connection"
                with pytest.raises(ConnectionError, match="allow_reconnect=False"):
                    task.result()
        finally:
            await nc.close()


@pytest.mark.reliability
async def test_amebus_run_through_a_half_open_connection(server: NatsServer,
                                                         tmp_path: Path) -> None:
    """``amebus run`` (its own connection: pings every 10 s) through the black-holed proxy.

    About a minute (the messages held by the dead connection come back after the service's
    30 s ack_wait), so only in the full form."""
    if not FULL:
        pytest.skip("full form only (AMEBUS_RELIABILITY=full): about 60 s")
    out, err = tmp_path / "handled.txt", tmp_path / "stderr.txt"
    out.touch()
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(AMEBUS_CLI_TEST_OUT=str(out), PYTHONUNBUFFERED="1")
    root = Path(__file__).resolve().parent.parent
    async with TcpProxy(server.port) as proxy:
        with err.open("wb") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "amebus", "run", "tests.cli_services:Recorder",
                 "--server", proxy.url], cwd=root, env=env, stdout=subprocess.DEVNULL,
                stderr=stderr)
        try:
            deadline = time.monotonic() + 20
            while "serving" not in err.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, err.read_text()
                await asyncio.sleep(0.05)
            producer = await nats.connect(server.url)
            js = producer.jetstream()
            published: dict[int, float] = {}
            seen: dict[int, float] = {}
            cut = 0.0
            for n in range(400):  # 20 per second; the cut after 3 s
                await js.publish(f"cli.ping.{n}", b'{"n": %d}' % n)
                published[n] = time.monotonic()
                if n == 60:
                    assert proxy.blackhole() == 1
                    cut = time.monotonic()
                for line in out.read_text().split():
                    seen.setdefault(int(line), time.monotonic())
                await asyncio.sleep(0.05)
            await producer.close()
            deadline = time.monotonic() + 90
            while set(seen) != set(published) and time.monotonic() < deadline:
                for line in out.read_text().split():
                    seen.setdefault(int(line), time.monotonic())
                await asyncio.sleep(0.1)
            resumed = min(when for n, when in seen.items() if published[n] > cut + 1.0)
            lines = out.read_text().split()
            print(f"amebus run: resumed {resumed - cut:.1f}s after the cut, {len(published)} "
                  f"published, {len(lines) - len(set(lines))} duplicates")
            assert set(published) - set(seen) == set(), "lost"
            assert resumed - cut < RESUME_WITHIN
            assert "the connection to NATS is dead" in err.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()


async def test_a_server_side_cut_is_logged_once_and_counted(
        server: NatsServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("WARNING", logger="amebus")
    ledger = Ledger()
    nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1,
                            error_cb=_quiet)
    service = _service(ledger, 0.0)
    try:
        async with serving(service, nc.jetstream()):
            await _publish(server, ledger, ["before"], rate=0)
            await asyncio.wait_for(ledger.done.wait(), timeout=10)
            await server.kill()  # the server cuts every connection
            await server.start()
            ledger.done.clear()
            await _publish(server, ledger, ["after"], rate=0)
            await asyncio.wait_for(ledger.done.wait(), timeout=20)
            stats = service.stats
    finally:
        await nc.close()
    assert stats.disconnects == 1
    assert stats.dead_connections == 0
    lines = [r.getMessage() for r in caplog.records if "was lost and replaced" in r.getMessage()]
    assert len(lines) == 1, lines
    assert "Slow Consumer" in lines[0]  # the hint for the most likely cut with large messages
