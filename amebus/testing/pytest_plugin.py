"""Pytest fixtures for tests against a real nats-server: a server, a client, names that never clash.

Loaded through the ``pytest11`` entry point of the installed amebus distribution. Fixtures:

- ``nats_server``: one server for the whole session; never stop, kill or restart it.
- ``nats_server_fresh``: a server of the test's own, free to kill and restart.
- ``nats_url``: the session server's URL.
- ``nc`` / ``js``: a client connected to the session server (reconnecting forever, pinging
  every 10 s) and its JetStream context; drained and closed after the test.
- ``unique_name``: ``unique_name()`` returns ``"T3f9a0c1b2d"``, ``unique_name("ORDERS")``
  returns ``"ORDERS_3f9a0c1b2d"``; use it for streams and durables on the shared server.

When a test fails, the tail of every server log it used is added to the report.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator

import nats
import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from amebus.testing.cluster import NatsCluster
from amebus.testing.server import NatsServer

__all__ = [
    "js",
    "nats_server",
    "nats_server_fresh",
    "nats_url",
    "nc",
    "unique_name",
]

_LOG_LINES = 40


@pytest.fixture(scope="session")
def nats_server() -> Iterator[NatsServer]:
    """A nats-server with JetStream shared by the session; isolate tests by unique names."""
    with NatsServer(name="amebus-session") as server:
        yield server


@pytest.fixture
def nats_server_fresh() -> Iterator[NatsServer]:
    """A nats-server with JetStream for this test alone: kill it, restart it, reconfigure it."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def nats_url(nats_server: NatsServer) -> str:
    return nats_server.url


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Client]:
    """A client of the session server that reconnects forever, 50 ms apart."""
    client = await nats.connect(
        nats_url,
        name="amebus-test",
        connect_timeout=2,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.05,
        ping_interval=10,  # a dead connection is found within 30 s (docs/deployment.md)
        max_outstanding_pings=2,
    )
    try:
        yield client
    finally:
        await _close(client)


@pytest.fixture
def js(nc: Client) -> JetStreamContext:
    return nc.jetstream()


@pytest.fixture
def unique_name() -> Callable[..., str]:
    """A factory of names no other test uses: ``unique_name(prefix=None) -> str``."""

    def make(prefix: str | None = None) -> str:
        suffix = uuid.uuid4().hex[:10]
        return f"T{suffix}" if prefix is None else f"{prefix}_{suffix}"

    return make


async def _close(client: Client) -> None:
    """Drain a connected client (bounded), close any other; never fail the teardown."""
    if client.is_closed:
        return
    if client.is_connected:
        with contextlib.suppress(NatsError, TimeoutError):
            await asyncio.wait_for(client.drain(), 5)
    if not client.is_closed:
        await client.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach the tail of each server log a failed test used to its report."""
    report = yield
    if report.failed:
        for value in getattr(item, "funcargs", {}).values():
            servers = [value] if isinstance(value, NatsServer) else []
            if isinstance(value, NatsCluster):
                servers = value.servers
            for server in servers:
                tail = server.log_tail(_LOG_LINES)
                if tail:
                    title = f"nats-server {server.name!r} log (last {_LOG_LINES} lines)"
                    report.sections.append((title, tail))
    return report
