"""``amebus run``'s embedded nats-server never outlives the command: a hung-up terminal
(SIGHUP), a SIGKILL of the command, a reader of its stderr that went away. Each test spawns
the real command, ends it, and checks the server's process and its temporary directory."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parent.parent
TARGET = "tests.cli_services:Recorder"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="the death signal is Linux's prctl(PR_SET_PDEATHSIG)")


class Cli:
    """``amebus run`` with its stderr on a pipe we read, and the embedded server it started."""

    def __init__(self, tmp: Path, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
        env.update(AMEBUS_CLI_TEST_OUT=str(tmp / "out.txt"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "amebus", "run", TARGET, "--status-interval", "0", *extra],
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE)
        assert self.proc.stderr is not None
        self.lines: list[str] = []
        started = self.read_until(r"embedded nats-server at (\S+), store (\S+)")
        self.store = Path(started[2])
        self.read_until(r"serving")
        servers = [p for p in psutil.Process(self.proc.pid).children()
                   if p.name() == "nats-server"]
        assert len(servers) == 1, servers
        self.server = servers[0]

    def read_until(self, pattern: str) -> re.Match[str]:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:  # EOF when the command exits: then the test fails
            line = raw.decode(errors="replace")
            self.lines.append(line)
            if found := re.search(pattern, line):
                return found
        pytest.fail(f"no {pattern!r} before amebus run ended:\n{''.join(self.lines)}")

    @property
    def tmp_dir(self) -> Path:
        return self.store.parent

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def gone(process: psutil.Process) -> bool:
    """Not running any more (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def eventually(condition: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not true after {timeout}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[Callable[..., Cli]]:
    started: list[Cli] = []

    def start(*extra: str) -> Cli:
        started.append(Cli(tmp_path, *extra))
        return started[-1]

    yield start
    for running in started:
        running.kill()
        if not gone(running.server):
            running.server.kill()


def test_the_server_listens_on_loopback_only_and_its_store_is_private(
        cli: Callable[..., Cli]) -> None:
    running = cli()
    listening = {c.laddr.ip for c in running.server.net_connections("inet")
                 if c.status == psutil.CONN_LISTEN}
    assert listening == {"127.0.0.1"}
    for path in (running.tmp_dir, running.store):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path
    # a session of its own: the terminal's Ctrl-C reaches only the command, which drains first
    assert os.getsid(running.server.pid) == running.server.pid


def test_sighup_stops_the_command_and_the_server(cli: Callable[..., Cli]) -> None:
    running = cli()
    running.proc.send_signal(signal.SIGHUP)
    running.read_until(r"SIGHUP: stopping")
    assert running.proc.wait(15) == 0
    assert gone(running.server)
    assert not running.tmp_dir.exists()


def test_sigkill_of_the_command_takes_the_server_and_its_directory(
        cli: Callable[..., Cli]) -> None:
    running = cli()
    running.proc.kill()
    running.proc.wait(10)
    eventually(lambda: gone(running.server), "the nats-server is gone")
    eventually(lambda: not running.tmp_dir.exists(), f"{running.tmp_dir} is removed")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signals_work_after_the_stderr_reader_went_away(cli: Callable[..., Cli],
                                                        signum: int) -> None:
    running = cli()
    assert running.proc.stderr is not None
    running.proc.stderr.close()  # the pipe's reader is gone: every write to stderr fails
    running.proc.send_signal(signum)
    assert running.proc.wait(15) == 0
    assert gone(running.server)
    assert not running.tmp_dir.exists()


def test_a_kept_store_survives_a_sigkill_but_the_rest_is_removed(
        cli: Callable[..., Cli], tmp_path: Path) -> None:
    store = tmp_path / "kept-store"
    running = cli("--store", str(store))
    assert running.store == store
    assert stat.S_IMODE(store.stat().st_mode) == 0o700
    config = Path(running.server.cmdline()[-1])
    running.proc.kill()
    running.proc.wait(10)
    eventually(lambda: gone(running.server), "the nats-server is gone")
    eventually(lambda: not config.exists(), f"{config} (the temporary config) is removed")
    assert (store / "jetstream").is_dir()
