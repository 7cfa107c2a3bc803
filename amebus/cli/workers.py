"""``amebus run --workers N``: N worker processes on one durable, supervised.

Each worker is a plain ``amebus run`` child with the same command line; the supervisor only
adds ``AMEBUS_WORKER=i/N`` to its environment (the child then ignores ``--workers`` and
``--store``) and, when no ``--server`` or ``NATS_URL`` is given, ``NATS_URL`` of the embedded
nats-server the supervisor starts once and shares. Each worker connects like any client.

- Output: every line a worker writes (its log on stderr, a handler's ``print`` on stdout) is
  passed on with a ``[worker i]`` prefix; workers are never on a terminal, so their status
  lines are log lines every ``--status-interval``; the supervisor keeps no status line.
- A worker that exits while the supervisor is not stopping is restarted after a backoff
  (0.5 s doubling to 30 s; back to 0.5 s after it ran 30 s). ``MAX_CRASHES`` exits within
  ``CRASH_WINDOW`` seconds are a crash loop: the supervisor stops all workers and exits 1.
- The first SIGINT/SIGTERM/SIGHUP is sent on as one SIGTERM to each worker, which drains within
  its ``shutdown_timeout``; a worker still running ``STOP_GRACE`` seconds after that is killed.
  A second signal kills every worker at once (exit code 128 + the signal's number).
- Workers run in sessions of their own (a terminal's Ctrl-C reaches only the supervisor, which
  sends one SIGTERM, not two) and get ``PR_SET_PDEATHSIG`` (SIGTERM) on Linux: a supervisor
  killed with SIGKILL leaves no worker behind.

Written here rather than taken from a library: the supervisor is ~200 lines over asyncio's
subprocesses; supervisord/circus would add a daemon and config outside the command.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections import deque
from typing import TYPE_CHECKING, TextIO

from amebus.cli.connect import server_url
from amebus.cli.embedded import death_signal
from amebus.cli.load import USAGE, CommandError, say, service_class

if TYPE_CHECKING:
    from amebus.server import NatsServer

__all__ = ["CRASH_WINDOW", "MAX_CRASHES", "STOP_GRACE", "WORKER_ENV", "supervise"]

WORKER_ENV = "AMEBUS_WORKER"
"""Set to ``i/N`` in a worker's environment: this ``amebus run`` is worker i of N."""
MAX_CRASHES = 5
CRASH_WINDOW = 60.0
STOP_GRACE = 10.0
_FIRST_BACKOFF, _MAX_BACKOFF, _STABLE_AFTER = 0.5, 30.0, 30.0
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _exit_text(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class _Worker:
    """One worker slot: the current process, its restarts and its backoff."""

    def __init__(self, index: int, total: int) -> None:
        self.index, self.total = index, total
        self.proc: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.backoff = _FIRST_BACKOFF
        self.crashes: deque[float] = deque()
        self.restarts = 0


class _Supervisor:
    def __init__(self, argv: list[str], workers: int, url: str | None) -> None:
        self.argv = argv
        self.slots = [_Worker(i + 1, workers) for i in range(workers)]
        self.url = url
        self.stopping = asyncio.Event()
        self.signum = self.forced = 0
        self.failed = ""

    def on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.signum:
            self.forced = signum
            for slot in self.slots:
                if slot.proc is not None and slot.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        slot.proc.kill()
            say(f"{name} again: killed every worker; messages not settled are redelivered "
                f"after ack_wait")
            return
        self.signum = signum
        self.stopping.set()
        say(f"{name}: stopping {len(self.slots)} workers (each drains within its "
            f"shutdown_timeout; send it again to kill them at once)")
        self._terminate()

    def _terminate(self) -> None:
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.send_signal(signal.SIGTERM)

    async def _spawn(self, slot: _Worker) -> asyncio.subprocess.Process:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env[WORKER_ENV] = f"{slot.index}/{slot.total}"
        if self.url is not None:
            env["NATS_URL"] = self.url
        options = {"preexec_fn": death_signal(signal.SIGTERM)} \
            if sys.platform.startswith("linux") else {}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "amebus", *self.argv, env=env,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True, **options)
        slot.proc, slot.started = proc, time.monotonic()
        say(f"worker {slot.index} started (pid {proc.pid})")
        return proc

    async def _relay(self, stream: asyncio.StreamReader | None, prefix: str,
                     out: TextIO) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            with contextlib.suppress(OSError, ValueError):
                out.write(prefix + line.decode(errors="replace"))
                out.flush()

    async def keep(self, slot: _Worker) -> None:
        """Run the slot's worker until stopping; restart it with backoff when it exits."""
        while not self.stopping.is_set():
            proc = await self._spawn(slot)
            prefix = f"[worker {slot.index}] "
            relays = [asyncio.create_task(self._relay(proc.stdout, prefix, sys.stdout)),
                      asyncio.create_task(self._relay(proc.stderr, prefix, sys.stderr))]
            if self.stopping.is_set():  # the signal came while it started
                self._terminate()
            code = await proc.wait()
            await asyncio.gather(*relays)
            if self.stopping.is_set():
                if code != 0:
                    say(f"worker {slot.index} (pid {proc.pid}) stopped: {_exit_text(code)}")
                    self.failed = self.failed or f"worker {slot.index}: {_exit_text(code)}"
                return
            now = time.monotonic()
            if now - slot.started >= _STABLE_AFTER:
                slot.backoff = _FIRST_BACKOFF
            slot.crashes.append(now)
            while slot.crashes and now - slot.crashes[0] > CRASH_WINDOW:
                slot.crashes.popleft()
            if len(slot.crashes) >= MAX_CRASHES:
                self.failed = (f"worker {slot.index} exited {len(slot.crashes)} times within "
                               f"{CRASH_WINDOW:g}s (last: {_exit_text(code)}): a crash loop; "
                               f"stopping all workers; see its log lines above")
                say(self.failed)
                self.stopping.set()
                self._terminate()
                return
            say(f"worker {slot.index} (pid {proc.pid}) exited unexpectedly: "
                f"{_exit_text(code)}; restarting it in {slot.backoff:g}s")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), slot.backoff)
            slot.backoff = min(slot.backoff * 2, _MAX_BACKOFF)
            slot.restarts += 1

    async def reap(self, grace: float) -> None:
        """After the stop: kill what still runs ``grace`` seconds later."""
        await self.stopping.wait()
        await asyncio.sleep(grace)
        for slot in self.slots:
            if slot.proc is not None and slot.proc.returncode is None:
                say(f"worker {slot.index} (pid {slot.proc.pid}) still running {grace:g}s "
                    f"after the stop: killing it")
                with contextlib.suppress(ProcessLookupError):
                    slot.proc.kill()


async def _supervise(argv: list[str], workers: int, url: str | None, grace: float) -> int:
    supervisor = _Supervisor(argv, workers, url)
    loop = asyncio.get_running_loop()
    for signum in _SIGNALS:
        loop.add_signal_handler(signum, supervisor.on_signal, signum)
    reaper = asyncio.create_task(supervisor.reap(grace))
    try:
        await asyncio.gather(*(supervisor.keep(slot) for slot in supervisor.slots))
    finally:
        reaper.cancel()
        for signum in _SIGNALS:
            loop.remove_signal_handler(signum)
    restarts = sum(slot.restarts for slot in supervisor.slots)
    if supervisor.forced:
        return 128 + supervisor.forced
    if supervisor.signum and not supervisor.failed:
        say(f"stopped: {workers} workers exited cleanly ({restarts} restarts)")
        return 0
    say(f"stopped: {supervisor.failed} ({restarts} restarts)")
    return 1


def supervise(args: argparse.Namespace, argv: list[str]) -> int:
    """``amebus run --workers N``: run ``argv`` (the ``run`` command line) as N supervised
    workers, with one embedded server when no server is given; the exit code."""
    from amebus.cli.run import embedded_server

    cls = service_class(args.target)  # a bad target fails once, here, not N times in a loop
    if args.metrics and args.workers > 1 and not args.metrics.endswith(":0"):
        msg = (f"--metrics {args.metrics!r} with --workers {args.workers}: the workers cannot "
               f"all listen on one port; use port 0 (each worker picks a free one and says it)")
        raise CommandError(msg, USAGE)
    url = server_url(args)
    if url is not None and args.store is not None:
        msg = "--store is for the embedded server; it has no effect with --server or NATS_URL"
        raise CommandError(msg, USAGE)
    server: NatsServer | None = None
    if url is None:
        server = asyncio.run(embedded_server(args.store))
        say(f"no --server or NATS_URL: started an embedded nats-server at {server.url}, store "
            f"{server.store_dir}, shared by {args.workers} workers")
    try:
        grace = cls.shutdown_timeout + STOP_GRACE
        return asyncio.run(_supervise(argv, args.workers, server.url if server else None, grace))
    finally:
        if server is not None:
            server.stop_sync()
