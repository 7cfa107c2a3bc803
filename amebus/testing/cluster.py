"""A small JetStream cluster of real nats-servers on 127.0.0.1, for failover tests.

Each member is a :class:`NatsServer` with a ``cluster { ... }`` block routing to the others.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Self

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from amebus.server import HOST, NatsServer, free_ports

__all__ = ["NatsCluster"]


class NatsCluster:
    """``size`` clustered nats-servers with JetStream, named ``<name>-0`` to ``<name>-<size-1>``.

    ``start()`` returns once every server is healthy, which for a cluster means the JetStream
    meta leader is elected and every server is current with it. A stopped (``SIGTERM``) stream
    leader hands over at once; a killed one is replaced after a Raft election timeout, which
    nats-server fixes at 4 to 9 seconds.

    Args:
        size: number of servers, at least 2.
        name: the cluster name, also the prefix of the server names.
        config: extra config text for every server.
        debug: log debug and protocol trace lines.
    """

    def __init__(
        self,
        size: int = 3,
        *,
        name: str = "amebus",
        config: str | None = None,
        debug: bool = False,
    ) -> None:
        if size < 2:
            msg = f"a NatsCluster needs size >= 2, got size={size!r}; use NatsServer for one"
            raise ValueError(msg)
        ports = free_ports(2 * size)
        clients, routes = ports[:size], ports[size:]
        route_urls = ", ".join(json.dumps(f"nats-route://{HOST}:{port}") for port in routes)
        self._servers = [
            NatsServer(
                port=client,
                name=f"{name}-{i}",
                debug=debug,
                config=(
                    f"cluster {{\n  name: {json.dumps(name)}\n"
                    f"  listen: {json.dumps(f'{HOST}:{route}')}\n"
                    f"  routes: [{route_urls}]\n}}\n{config or ''}"
                ),
            )
            for i, (client, route) in enumerate(zip(clients, routes, strict=True))
        ]

    def __repr__(self) -> str:
        return f"NatsCluster({self._servers!r})"

    @property
    def servers(self) -> list[NatsServer]:
        return list(self._servers)

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self._servers]

    def start_sync(self, timeout: float = 20.0) -> None:
        """Start every server at once, then block until the JetStream meta leader is elected."""
        with ThreadPoolExecutor(len(self._servers)) as pool:
            futures = [pool.submit(server.start_sync, timeout) for server in self._servers]
        errors = [error for future in futures if (error := future.exception()) is not None]
        if errors:
            self.stop_sync()
            raise errors[0]

    def stop_sync(self, timeout: float = 5.0) -> None:
        """Stop every server at once and remove their temporary directories."""
        with ThreadPoolExecutor(len(self._servers)) as pool:
            list(pool.map(lambda server: server.stop_sync(timeout), self._servers))

    async def start(self, timeout: float = 20.0) -> None:
        await asyncio.to_thread(self.start_sync, timeout)

    async def stop(self, timeout: float = 5.0) -> None:
        await asyncio.to_thread(self.stop_sync, timeout)

    async def stream_leader(
        self, js_or_nc: JetStreamContext | Client, stream: str, *, timeout: float = 10.0
    ) -> NatsServer:
        """The running server that leads ``stream``, waiting out a leader election.

        Raises ``nats.js.errors.NotFoundError`` at once if the stream does not exist, and
        ``TimeoutError`` if no running server leads it within ``timeout`` seconds.
        """
        js = js_or_nc.jetstream() if isinstance(js_or_nc, Client) else js_or_nc
        deadline = time.monotonic() + timeout
        seen: object = None
        while True:
            try:  # a stream without a leader does not answer: ask briefly, often
                info = await asyncio.wait_for(js.stream_info(stream), 0.5)
            except NotFoundError:
                raise
            except (NatsError, TimeoutError) as exc:
                seen = exc
            else:
                seen = info.cluster.leader if info.cluster else None
                for server in self._servers:
                    if server.name == seen and server.running:
                        return server
            if time.monotonic() > deadline:
                msg = (
                    f"no running server of {self!r} leads stream {stream!r} after {timeout}s "
                    f"(last answer: {seen!r}); is the stream replicated in this cluster?"
                )
                raise TimeoutError(msg)
            await asyncio.sleep(0.05)

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
