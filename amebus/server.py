"""A real nats-server process on 127.0.0.1 (tests, and the command line's embedded server)
with JetStream on a file store.

Drive it from async code (``await server.start()``) or plain code (``server.start_sync()``).
Finding the executable, free ports and the reaper: :mod:`amebus.server_process`.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from amebus.server_process import ENV_VAR, HOST, Reaper, find_server_binary, free_ports

__all__ = ["ENV_VAR", "HOST", "NatsServer", "find_server_binary", "free_ports"]


def _quote(text: str | Path) -> str:
    return json.dumps(str(text))


class NatsServer:
    """One nats-server on 127.0.0.1, with JetStream on a file store that survives restarts.

    The client port is chosen once (or given) and kept across ``restart()``, so clients with
    reconnect enabled find the server again. A temporary directory holds the config file,
    the log (``log_path``) and, unless ``store_dir`` is given, the JetStream store; ``stop()``
    removes it. ``kill()`` and ``restart()`` keep it. Servers still running when they are
    garbage-collected or when the interpreter exits are killed.

    Args:
        port: client port; ``None`` picks a free one.
        store_dir: JetStream store directory, kept on ``stop()``; ``None`` uses a temporary one.
        jetstream: enable JetStream.
        config: extra nats-server config text appended to the generated file
            (``authorization { ... }``, ``tls { ... }``, ``cluster { ... }``).
        max_payload: largest message the server accepts, in bytes.
        debug: log debug and protocol trace lines.
        name: ``server_name``; defaults to ``amebus-<port>``.
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | os.PathLike[str] | None = None,
        jetstream: bool = True,
        config: str | None = None,
        max_payload: int | None = None,
        debug: bool = False,
        name: str | None = None,
    ) -> None:
        self._pick_port = port is None  # until the first start, a taken port may be re-picked
        self._port, self._monitor_port = free_ports(2)
        if port is not None:
            self._port = port
        self._name = name or f"amebus-{self._port}"
        self._user_store = Path(store_dir) if store_dir is not None else None
        self._jetstream = jetstream
        self._config = config
        self._max_payload = max_payload
        self._debug = debug
        self._tmp = self._make_tmp()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reaper = Reaper(self._tmp)
        self._finalizer = weakref.finalize(self, self._reaper)

    def _make_tmp(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"amebus-{self._name}-"))

    def __repr__(self) -> str:
        return f"NatsServer(name={self._name!r}, url={self.url!r}, running={self.running})"

    @property
    def url(self) -> str:
        return f"nats://{HOST}:{self._port}"

    @property
    def port(self) -> int:
        return self._port

    @property
    def monitor_url(self) -> str:
        """The HTTP monitoring endpoint (``/varz``, ``/jsz``, ``/healthz``)."""
        return f"http://{HOST}:{self._monitor_port}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def store_dir(self) -> Path:
        return self._user_store if self._user_store is not None else self._tmp / "store"

    @property
    def log_path(self) -> Path:
        return self._tmp / "nats-server.log"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the server log, or ``""`` if there is none yet."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _config_text(self) -> str:
        parts = [
            f"server_name: {_quote(self._name)}",
            f"listen: {_quote(f'{HOST}:{self._port}')}",
            f"http: {_quote(f'{HOST}:{self._monitor_port}')}",
            "logtime: true",
        ]
        if self._jetstream:
            parts.append(f"jetstream {{ store_dir: {_quote(self.store_dir)} }}")
        if self._max_payload is not None:
            parts.append(f"max_payload: {self._max_payload}")
        if self._debug:
            parts += ["debug: true", "trace: true"]
        if self._config:
            parts.append(self._config)
        return "\n".join(parts) + "\n"

    def _spawn(self) -> None:
        if self.running:
            msg = f"{self!r} is already running; call stop() or kill() before start()"
            raise RuntimeError(msg)
        binary = find_server_binary()
        if not self._tmp.is_dir():  # removed by an earlier stop(): start over, empty
            self._tmp = self._reaper.tmp_dir = self._make_tmp()
        conf = self._tmp / "nats-server.conf"
        conf.write_text(self._config_text())
        with self.log_path.open("ab") as log:
            log.write(f"--- amebus: starting {binary} -c {conf}\n".encode())
            log.flush()
            self._proc = self._reaper.proc = subprocess.Popen(
                [str(binary), "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                **self._popen_options(),
            )

    def _popen_options(self) -> dict[str, Any]:
        """Extra ``subprocess.Popen`` arguments for the server process (none here)."""
        return {}

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        """Poll ``/healthz`` until clients can connect and JetStream is up (and current)."""
        proc = self._proc
        if proc is None:
            msg = f"{self!r} was never spawned; call start() instead"
            raise RuntimeError(msg)
        delay = 0.005
        while not self._healthy():
            code = proc.poll()
            if code is not None:
                msg = (
                    f"nats-server {self._name!r} exited with code {code} while starting; "
                    f"check the config; log tail:\n{self.log_tail(15)}"
                )
                raise RuntimeError(msg)
            if time.monotonic() > deadline:
                msg = (
                    f"nats-server {self._name!r} at {self.url} was not ready after {timeout}s; "
                    f"pass a larger timeout or read the log tail:\n{self.log_tail(15)}"
                )
                self.kill_sync()
                raise TimeoutError(msg)
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection(HOST, self._monitor_port, timeout=1)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _terminate(self, timeout: float) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._proc = self._reaper.proc = None

    def start_sync(self, timeout: float = 10.0) -> None:
        """Spawn the server and block until it accepts clients and JetStream is ready."""
        deadline = time.monotonic() + timeout
        for attempt in range(3):  # a picked port may be taken by someone else before we bind
            self._spawn()
            try:
                self._wait_ready(deadline, timeout)
            except RuntimeError:
                tail = self.log_tail(3)
                fixed_port_taken = f"{HOST}:{self._port}: bind" in tail and not self._pick_port
                if attempt == 2 or "address already in use" not in tail or fixed_port_taken:
                    raise
                port, self._monitor_port = free_ports(2)
                self._port = port if self._pick_port else self._port
            else:
                self._pick_port = False
                return

    def stop_sync(self, timeout: float = 5.0) -> None:
        """SIGTERM, SIGKILL after ``timeout``, then remove the temporary directory."""
        self._terminate(timeout)
        self._reaper()

    def kill_sync(self) -> None:
        """SIGKILL, as in a crash; the store and the port are kept for ``restart()``."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._terminate(5.0)

    def restart_sync(self, timeout: float = 10.0) -> None:
        """Stop gracefully if running, then start on the same port and store."""
        self._terminate(5.0)
        self.start_sync(timeout)

    async def start(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.start_sync, timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop_sync, timeout)

    async def kill(self) -> None:
        await asyncio.to_thread(self.kill_sync)

    async def restart(self, timeout: float = 10.0) -> None:
        await asyncio.to_thread(self.restart_sync, timeout)

    def __enter__(self) -> Self:
        self.start_sync()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_sync()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
