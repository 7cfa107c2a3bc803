"""A TCP proxy on 127.0.0.1 for fault tests: forward connections, then black-hole them.

``blackhole()`` makes every live connection silent in both directions, as a NAT gateway or a
load balancer that forgot the flow does: no FIN, no RST, nothing forwarded, nothing read (the
sender's buffers fill as they would). New connections are still accepted and forwarded, so a
client that gives up on the dead connection and reconnects gets through::

    async with TcpProxy(server.port) as proxy:
        nc = await nats.connect(proxy.url)
        ...
        proxy.blackhole()  # the live connection is now half-open, silently
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType

import attrs

__all__ = ["TcpProxy"]


@attrs.define(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    pumps: list[asyncio.Task[None]] = attrs.Factory(list)
    dead: bool = False

    def silence(self) -> None:
        self.dead = True
        for pump in self.pumps:
            pump.cancel()  # stop reading and forwarding; the sockets stay open

    def close(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.transport.abort()


class TcpProxy:
    """Forwards connections on ``127.0.0.1:<port>`` to ``target_host:target_port``.

    Args:
        target_port: the port to forward to (a nats-server's ``port``).
        target_host: the host to forward to (loopback by default).

    Attributes:
        accepted: connections accepted so far.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.accepted = 0
        self._links: list[_Link] = []
        self._server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The port the proxy listens on (after :meth:`start`)."""
        if self._server is None:
            msg = "the proxy is not started; call start() or use 'async with TcpProxy(...)'"
            raise RuntimeError(msg)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def live(self) -> int:
        """Connections being forwarded now (not black-holed, not closed)."""
        return sum(1 for link in self._links if not link.dead)

    async def start(self) -> TcpProxy:
        """Listen on an ephemeral port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def blackhole(self) -> int:
        """Silence every live connection (both directions, no FIN/RST); return how many."""
        count = 0
        for link in self._links:
            if not link.dead:
                link.silence()
                count += 1
        return count

    async def close(self) -> None:
        """Stop listening and close every connection (black-holed ones too)."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
        for link in self._links:
            link.silence()
            link.close()
        self._links.clear()

    async def __aenter__(self) -> TcpProxy:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        trace: TracebackType | None) -> None:
        await self.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        link = _Link(client=writer, server=up_writer)
        link.pumps = [asyncio.create_task(self._pump(reader, up_writer, link)),
                      asyncio.create_task(self._pump(up_reader, writer, link))]
        self._links.append(link)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter,
                    link: _Link) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        if not link.dead:  # an end on one side, not a black hole: end the other side too
            link.dead = True
            link.close()
