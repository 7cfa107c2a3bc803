"""The ``amebus`` command, run as a subprocess against real nats-servers.

Services served here live in tests/cli_services.py; their handlers append a line per message
to the file named by ``$AMEBUS_CLI_TEST_OUT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from amebus.testing import NatsServer
from amebus.testing.server import free_ports
from tests.cli_services import Ping

ROOT = Path(__file__).resolve().parent.parent


def _env(out: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    env.update(AMEBUS_CLI_TEST_OUT=str(out), PYTHONUNBUFFERED="1", **extra)
    return env


def amebus(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None,
           timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run ``python -m amebus ARGS`` to completion."""
    return subprocess.run([sys.executable, "-m", "amebus", *args], cwd=ROOT, env=env,
                          input=stdin.decode() if stdin is not None else None,
                          capture_output=True, text=True, timeout=timeout, check=False)


class Running:
    """An ``amebus run`` subprocess, its stderr collected in a file."""

    def __init__(self, tmp: Path, *args: str, env: dict[str, str]) -> None:
        self.err_path = tmp / f"stderr-{time.monotonic_ns()}.txt"
        self._err = self.err_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "amebus", "run", *args], cwd=ROOT,
                                     env=env, stdout=subprocess.DEVNULL, stderr=self._err)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    async def wait_for(self, text: str, timeout: float = 10) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            if self.proc.poll() is not None:
                pytest.fail(f"amebus run exited {self.proc.returncode}:\n{self.stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {text!r} in amebus run's stderr after {timeout}s:\n{self.stderr}")
            await asyncio.sleep(0.02)
        return self.stderr

    async def stop(self, signum: int = signal.SIGTERM, timeout: float = 15) -> int:
        self.proc.send_signal(signum)
        return await self.exited(timeout)

    async def exited(self, timeout: float = 15) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"amebus run did not exit within {timeout}s:\n{self.stderr}")
            await asyncio.sleep(0.02)
        self._err.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._err.close()


@pytest.fixture
def out(tmp_path: Path) -> Path:
    path = tmp_path / "handled.txt"
    path.touch()
    return path


@pytest.fixture
def start(tmp_path: Path, out: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(*args: str, **extra_env: str) -> Running:
        running = Running(tmp_path, *args, env=_env(out, **extra_env))
        started.append(running)
        return running

    yield start
    for running in started:
        running.kill()


@pytest.fixture
async def client(nats_server_fresh: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(nats_server_fresh.url, max_reconnect_attempts=-1)
    yield nc
    await nc.close()


def handled(out: Path) -> list[str]:
    return out.read_text().splitlines()


async def wait_handled(out: Path, count: int, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines := handled(out)) < count:
        assert time.monotonic() < deadline, f"handled {len(lines)} of {count}"
        await asyncio.sleep(0.02)
    return lines


async def assert_settled(nc: Client, stream: str, durable: str) -> None:
    info = await nc.jetstream().consumer_info(stream, durable)
    assert (info.num_pending, info.num_ack_pending, info.num_waiting >= 0) == (0, 0, True)


class TestRun:
    async def test_serves_then_stops_on_sigterm_with_nothing_lost(
            self, nats_server_fresh: NatsServer, client: Client, start: Callable[..., Running],
            out: Path) -> None:
        run = start("tests.cli_services:Recorder", "--server", nats_server_fresh.url,
                    "--status-interval", "0.2")
        await run.wait_for("serving")
        js = client.jetstream()
        for n in range(50):
            await Ping(n).publish(js)
        await js.publish("cli.raw", b"raw")
        lines = await wait_handled(out, 51)
        await run.wait_for("acked 51")  # the status line, not a terminal: a log line
        assert await run.stop(signal.SIGTERM) == 0
        assert sorted(lines) == sorted([*map(str, range(50)), "raw"])
        assert "stopped: handled 51 (acked 51, naked 0, termed 0, dead-lettered 0)" in run.stderr
        assert re.search(r"msg/s \| acked \d+ \| naked 0 \| termed 0 \| dead-lettered 0 \| "
                         r"in flight \d+ \| pending (\d+|\?)", run.stderr)
        await assert_settled(client, "CLI", "Recorder")

    async def test_stopped_midway_the_next_run_handles_the_rest(
            self, nats_server_fresh: NatsServer, client: Client, start: Callable[..., Running],
            out: Path) -> None:
        url = nats_server_fresh.url
        first = start("tests.cli_services:Recorder", "--server", url, "--concurrency", "2",
                      AMEBUS_CLI_TEST_DELAY="0.02")
        await first.wait_for("serving")
        js = client.jetstream()
        for n in range(100):
            await Ping(n).publish(js)
        await wait_handled(out, 10)
        assert await first.stop(signal.SIGINT) == 0
        assert "SIGINT: stopping" in first.stderr
        assert len(handled(out)) < 100
        second = start("tests.cli_services:Recorder", "--server", url,
                       AMEBUS_CLI_TEST_DELAY="0.0")
        await wait_handled(out, 100)
        assert await second.stop() == 0
        assert set(handled(out)) == {str(n) for n in range(100)}  # at least once, none lost
        await assert_settled(client, "CLI", "Recorder")

    async def test_embedded_server_and_a_second_signal(
            self, start: Callable[..., Running], out: Path) -> None:
        run = start("tests.cli_services:Stuck")
        text = await run.wait_for("serving")
        match = re.search(r"no --server or NATS_URL: started an embedded nats-server at "
                          r"(nats://127\.0\.0\.1:(\d+)), store (\S+)", text)
        assert match, text
        url, port = match.group(1), int(match.group(2))
        nc = await nats.connect(url)
        await nc.jetstream().publish("cli.stuck", b"")
        await nc.close()
        await wait_handled(out, 1)  # the handler started, and will not finish
        run.proc.send_signal(signal.SIGTERM)
        await run.wait_for("SIGTERM: stopping; running handlers get up to 60s")
        await asyncio.sleep(0.5)
        assert run.proc.poll() is None  # the running handler gets its shutdown_timeout
        assert await run.stop(signal.SIGTERM, timeout=5) == 128 + signal.SIGTERM
        assert "SIGTERM again: stopping at once" in run.stderr
        with socket.socket() as sock:  # the embedded server went with it
            assert sock.connect_ex(("127.0.0.1", port)) != 0


    async def test_status_line_in_place_on_a_terminal(
            self, nats_server_fresh: NatsServer, out: Path) -> None:
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "amebus", "run", "tests.cli_services:Recorder", "--server",
             nats_server_fresh.url], cwd=ROOT, env=_env(out), stdout=subprocess.DEVNULL,
            stderr=slave)
        os.close(slave)
        os.set_blocking(master, False)
        seen = b""
        try:
            status = re.compile(rb"\r\x1b\[K0\.0 msg/s \| acked 0 .* \| pending 0")
            deadline = time.monotonic() + 10
            while not status.search(seen) and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError):
                    seen += os.read(master, 4096)
                await asyncio.sleep(0.05)
            assert status.search(seen), seen
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


    async def test_a_handlers_output_never_runs_into_the_status_line(
            self, nats_server_fresh: NatsServer, client: Client, out: Path) -> None:
        import pty

        master, slave = pty.openpty()
        proc = subprocess.Popen(
            [sys.executable, "-m", "amebus", "run", "tests.cli_services:Printer", "--server",
             nats_server_fresh.url], cwd=ROOT, env=_env(out), stdout=slave, stderr=slave)
        os.close(slave)
        os.set_blocking(master, False)
        seen = b""

        async def read_until(pattern: bytes) -> None:
            nonlocal seen
            deadline = time.monotonic() + 10
            while not re.search(pattern, seen) and time.monotonic() < deadline:
                with contextlib.suppress(BlockingIOError, OSError):
                    seen += os.read(master, 4096)
                await asyncio.sleep(0.05)
            assert re.search(pattern, seen), seen

        try:
            await read_until(rb"msg/s \| acked 0")  # the status line is up
            js = client.jetstream()
            for n in range(3):
                await js.publish("cli.print", str(n).encode())
            await wait_handled(out, 3)
            await read_until(rb"handled 2\r?\n")
            # every printed line starts on a line of its own: the status line was cleared first
            for n in range(3):
                assert re.search(rb"(\r\x1b\[K|\n)handled %d\r?\n" % n, seen), seen
            assert not re.search(rb"pending \S+handled", seen), seen
            proc.send_signal(signal.SIGINT)
            assert proc.wait(10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(master)


class TestRoutes:
    def test_table_by_precedence(self) -> None:
        result = amebus("routes", "tests.cli_services:Recorder")
        assert result.returncode == 0, result.stderr
        lines = result.stdout.splitlines()
        assert lines[0] == "Recorder: stream CLI, durable Recorder; routes by precedence:"
        assert lines[1].split() == ["PATTERN", "ROUTE", "HANDLER", "RECEIVES"]
        assert lines[2].split() == ["cli.raw", "raw", "Recorder.raw", "bytes"]
        assert lines[3].split() == ["cli.ping.*", "ping", "Recorder.ping", "Ping"]
        assert lines[4] == "filter subjects: cli.ping.*, cli.raw (server_filter 'auto')"

    def test_json(self) -> None:
        result = amebus("routes", "tests.cli_services:Recorder", "--json")
        table = json.loads(result.stdout)
        assert table["service"] == "tests.cli_services.Recorder"
        assert (table["stream"], table["durable"]) == ("CLI", "Recorder")
        assert [r["pattern"] for r in table["routes"]] == ["cli.raw", "cli.ping.*"]
        assert table["routes"][1] | {"timeout": None} == {
            "pattern": "cli.ping.*", "name": "ping", "handler": "Recorder.ping",
            "takes": "event", "event": "tests.cli_services.Ping",
            "event_type": "Ping", "with_message": False, "timeout": None}
        assert table["filter_subjects"] == ["cli.ping.*", "cli.raw"]
        assert table["server_filter"] == "auto"

    def test_a_file_path_and_a_factory(self) -> None:
        result = amebus("routes", "examples/inventory_sqlite.py:make_service", "--json")
        assert result.returncode == 0, result.stderr
        assert [r["name"] for r in json.loads(result.stdout)["routes"]] == [
            "received", "reserved"]
        assert not (ROOT / "inventory.db").exists()  # read from the annotation, not called


class TestPublish:
    async def test_round_trip(self, nats_server_fresh: NatsServer, client: Client) -> None:
        js = client.jetstream()
        await js.add_stream(name="CLI", subjects=["cli.>"])
        url = nats_server_fresh.url
        result = amebus("publish", "cli.raw", "hello", "--server", url, "-H", "X-Trace: 7")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "stored 5 bytes on 'cli.raw': stream CLI, seq 1\n"
        stored = await js.get_msg("CLI", 1)
        assert (stored.data, (stored.headers or {}).get("X-Trace")) == (b"hello", "7")

        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"} | {"NATS_URL": url}
        for duplicate in (False, True):
            result = amebus("publish", "cli.raw", "-", "--msg-id", "m-1", "--json", env=env,
                            stdin=b"from stdin\n")
            assert json.loads(result.stdout) == {"stream": "CLI", "seq": 2,
                                                 "duplicate": duplicate, "domain": None}
        assert (await js.get_msg("CLI", 2)).data == b"from stdin\n"


def _one_sentence(result: subprocess.CompletedProcess[str], code: int, text: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amebus: "), result.stderr
    assert text in lines[0], lines[0]


class TestUserErrors:
    @pytest.mark.parametrize(("target", "text"), [
        ("no_such_module:Svc", "cannot import 'no_such_module': no module named"),
        ("tests.cli_services:Nope", "has no attribute 'Nope'; it defines Recorder"),
        ("tests.cli_services:Plain", "is the class tests.cli_services.Plain, not a Service"),
        ("tests.cli_services:not_a_service", "is 42 (of type int), not a Service subclass"),
        ("tests.cli_services", "is not a service reference; write module.path:ServiceClass"),
    ])
    @pytest.mark.parametrize("command", ["run", "routes"])
    def test_bad_target(self, command: str, target: str, text: str) -> None:
        _one_sentence(amebus(command, target, "--server", "nats://127.0.0.1:1")
                      if command == "run" else amebus(command, target), 2, text)

    def test_service_needing_arguments(self) -> None:
        result = amebus("run", "tests.cli_services:Needs", "--server", "nats://127.0.0.1:1")
        _one_sentence(result, 2, "is a Service that takes arguments")

    def test_unreachable_server(self, out: Path) -> None:
        url = f"nats://127.0.0.1:{free_ports(1)[0]}"
        started = time.monotonic()
        result = amebus("run", "tests.cli_services:Recorder", "--server", url,
                        "--connect-timeout", "0.5", env=_env(out))
        _one_sentence(result, 1, f"cannot connect to a NATS server at {url} within 0.5s")
        assert time.monotonic() - started < 5

    def test_missing_stream(self, nats_server_fresh: NatsServer, out: Path) -> None:
        result = amebus("run", "tests.cli_services:Missing", "--server",
                        nats_server_fresh.url, "--log-level", "warning", env=_env(out))
        _one_sentence(result, 1, "stream 'NO_SUCH_STREAM' does not exist")

    def test_wrong_credentials(self, out: Path) -> None:
        with NatsServer(config="authorization { user: ada, password: right }") as server:
            result = amebus("run", "tests.cli_services:Recorder", "--server", server.url,
                            "--user", "ada", "--password", "wrong", env=_env(out))
            _one_sentence(result, 1, "refused the credentials")
            result = amebus("publish", "cli.raw", "x", "--server", server.url, "--user", "ada",
                            "--password", "right")
            _one_sentence(result, 1, "no JetStream stream captures the subject 'cli.raw'")

    def test_store_without_the_embedded_server(self) -> None:
        result = amebus("run", "tests.cli_services:Recorder", "--server", "nats://127.0.0.1:1",
                        "--store", "/tmp/x")
        _one_sentence(result, 2, "--store is for the embedded server")

    def test_publish_needs_a_server(self, out: Path) -> None:
        _one_sentence(amebus("publish", "cli.raw", "x", env=_env(out)), 2,
                      "publish needs a server: pass --server URL or set NATS_URL")

    def test_publish_to_a_wildcard(self) -> None:
        _one_sentence(amebus("publish", "cli.*", "x", "--server", "nats://127.0.0.1:1"), 2,
                      "contains the wildcard '*'")

    def test_usage(self) -> None:
        result = amebus("run")
        assert result.returncode == 2
        assert "the following arguments are required" in result.stderr
