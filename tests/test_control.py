"""Pause, resume and reset against a real nats-server (and pause in the in-memory harness).

Pause is shown across two processes: an ``amebus run`` subprocess and a service served in
this process share one durable; ``amebus pause --until`` holds every delivery to both until
the server's deadline, then each message is handled exactly once.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats
import pytest
from _support import Space, eventually, serving, settled
from nats.js import JetStreamContext

import amebus
from amebus import control
from amebus.testing import NatsServer, ServiceHarness
from tests.cli_services import Stamped
from tests.test_cli import Running, _env

ROOT = Path(__file__).resolve().parent.parent


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run([sys.executable, "-m", "amebus", *args, "--server", url], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30, check=False)


def lines(out: Path) -> list[list[str]]:
    return [line.split() for line in out.read_text().splitlines()]


async def test_pause_holds_both_processes_until_the_deadline(
        nats_server_fresh: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "handled.txt"
    out.touch()
    monkeypatch.setenv("AMEBUS_CLI_TEST_OUT", str(out))
    url = nats_server_fresh.url
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="STAMP", subjects=["stamp.>"])
    other = Running(tmp_path, "tests.cli_services:Stamped", "--server", url, env=_env(out))
    try:
        await other.wait_for("serving stamp.>")
        async with serving(Stamped(), js):
            paused = cli(url, "pause", "tests.cli_services:Stamped", "--until", "3s")
            assert paused.returncode == 0, paused.stderr
            assert paused.stdout.startswith("paused STAMP > stamped until ")
            info = await js.consumer_info("STAMP", "stamped")
            deadline = dt.datetime.fromisoformat(info.config.pause_until.replace("Z", "+00:00"))
            for n in range(20):
                await js.publish(f"stamp.{n}", str(n).encode())

            async def held() -> bool:  # the server's count can lag the 20th store a moment
                info = await js.consumer_info("STAMP", "stamped")
                return bool(info.paused and info.num_pending == 20 and not info.num_ack_pending)

            await eventually(held, 1.0, what="20 pending, none delivered, while paused")
            assert dt.datetime.now(dt.UTC) < deadline, "the test was too slow to observe"
            assert lines(out) == []
            await eventually(lambda: len(lines(out)) >= 20, 15, what="20 handled")
            await eventually(lambda: _idle(js), what="settled")
        handled = lines(out)
        assert sorted(int(n) for n, _, _ in handled) == list(range(20))  # each exactly once
        assert min(float(t) for _, t, _ in handled) >= deadline.timestamp()
        pids = {pid for _, _, pid in handled}
        assert pids <= {str(os.getpid()), str(other.proc.pid)}
    finally:
        other.kill()
        await nc.close()


async def _idle(js: JetStreamContext) -> bool:
    info = await js.consumer_info("STAMP", "stamped")
    return info.num_pending == 0 and info.num_ack_pending == 0


async def test_pause_and_resume_api(js: JetStreamContext, space: Space) -> None:
    handled: list[bytes] = []

    class Ledger(amebus.Service):
        @amebus.Route(space.subject(">"))
        async def take(self, payload: bytes) -> None:
            handled.append(payload)

    async with serving(Ledger(), js, **space.options()):
        state = await control.pause(js, Ledger, stream=space.stream, durable=space.durable)
        assert state.paused and state.until == control.FOREVER
        await js.publish(space.subject("a"), b"a")
        info = await js.consumer_info(space.stream, space.durable)
        assert info.paused and info.num_pending == 1
        resumed = await control.resume(js, Ledger, stream=space.stream, durable=space.durable)
        assert not resumed.paused
        await settled(js, space, last_seq=1)
    assert handled == [b"a"]


async def test_reset_redelivers_from_a_sequence_and_a_time(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    handled: list[bytes] = []

    class Ledger(amebus.Service):
        @amebus.Route(space.subject(">"))
        async def take(self, payload: bytes) -> None:
            handled.append(payload)

    await js.add_stream(name=space.stream, subjects=[space.subject(">")])
    for n in range(1, 6):
        await js.publish(space.subject(str(n)), str(n).encode())
    async with serving(Ledger(), js, **space.options()):
        await settled(js, space, last_seq=5)
        state = await control.reset(js, Ledger, seq=3, stream=space.stream,
                                    durable=space.durable)
        assert state.reset_seq == 3
        await eventually(lambda: len(handled) == 8, what="3, 4, 5 handled again")
        await settled(js, space, last_seq=5)
    assert handled == [b"1", b"2", b"3", b"4", b"5", b"3", b"4", b"5"]
    when = (await js.get_msg(space.stream, 4)).time
    assert when is not None
    stamp = when.isoformat().replace("+00:00", "Z")
    target = ("reset", "tests.cli_services:Stamped", "--stream", space.stream, "--durable",
              space.durable)
    done = cli(nats_url, *target, "--to-time", stamp)
    assert done.returncode == 0, done.stderr
    assert done.stdout == (f"reset {space.stream} > {space.durable}: delivering again from "
                           f"stream sequence 4\n")
    handled.clear()
    async with serving(Ledger(), js, **space.options()):
        await eventually(lambda: handled == [b"4", b"5"], what="4, 5 handled again")
    bad = cli(nats_url, *target, "--to-time", "2099-01-01T00:00:00Z")
    assert bad.returncode == 1 and "holds no message stored at or after" in bad.stderr


async def test_harness_models_pause() -> None:
    handled: list[bytes] = []

    class Ledger(amebus.Service):
        @amebus.Route("orders.>")
        async def take(self, payload: bytes) -> None:
            handled.append(payload)

    harness = ServiceHarness(Ledger())
    harness.pause()
    held = await harness.feed("orders.1", b"1")
    assert held.held and held.decision is None and handled == [] and harness.paused
    outcomes: list[Any] = await harness.resume()
    assert [o.decision.action for o in outcomes] == ["ack"] and handled == [b"1"]
    harness.pause(until=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1))  # already over
    assert not harness.paused
    assert (await harness.feed("orders.2", b"2")).decision is not None
