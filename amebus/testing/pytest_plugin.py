"""Pytest fixtures for tests against a real nats-server: a server, a client, names that never clash.

Loaded through the ``pytest11`` entry point of the installed amebus distribution. Every
fixture name starts with ``amebus_``, so none clashes with a project's own ``nc`` or ``js``:

- ``amebus_nats_server``: one server for the whole session; never stop, kill or restart it.
- ``amebus_nats_server_fresh``: a server of the test's own, free to kill and restart.
- ``amebus_nats_url``: the session server's URL.
- ``amebus_nc`` / ``amebus_js``: a client connected to the session server (reconnecting
  forever, pinging every 10 s) and its JetStream context; drained and closed after the test.
- ``amebus_unique_name``: ``amebus_unique_name()`` returns ``"T3f9a0c1b2d"``,
  ``amebus_unique_name("ORDERS")`` returns ``"ORDERS_3f9a0c1b2d"``; use it for streams,
  durables and subjects on the shared server.

When a test fails, the tail of every server log it used is added to the report, and a
JetStream API error (nats-py shows it as a bare ``BadRequestError()``) is explained.
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

from amebus.server import NatsServer
from amebus.testing.cluster import NatsCluster

__all__ = [
    "amebus_js",
    "amebus_nats_server",
    "amebus_nats_server_fresh",
    "amebus_nats_url",
    "amebus_nc",
    "amebus_unique_name",
]

_LOG_LINES = 40


@pytest.fixture(scope="session")
def amebus_nats_server() -> Iterator[NatsServer]:
    """A nats-server with JetStream shared by the session; isolate tests by unique names."""
    with NatsServer(name="amebus-session") as server:
        yield server


@pytest.fixture
def amebus_nats_server_fresh() -> Iterator[NatsServer]:
    """A nats-server with JetStream for this test alone: kill it, restart it, reconfigure it."""
    with NatsServer() as server:
        yield server


@pytest.fixture
def amebus_nats_url(amebus_nats_server: NatsServer) -> str:
    """The session server's URL."""
    return amebus_nats_server.url


@pytest.fixture
async def amebus_nc(amebus_nats_url: str) -> AsyncIterator[Client]:
    """A client of the session server that reconnects forever, 50 ms apart."""
    client = await nats.connect(
        amebus_nats_url,
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
def amebus_js(amebus_nc: Client) -> JetStreamContext:
    """The JetStream context of ``amebus_nc``."""
    return amebus_nc.jetstream()


@pytest.fixture
def amebus_unique_name() -> Callable[..., str]:
    """A factory of names no other test uses: ``unique_name(prefix=None) -> str``."""

    def make(prefix: str | None = None) -> str:
        suffix = uuid.uuid4().hex[:10]
        return f"T{suffix}" if prefix is None else f"{prefix}_{suffix}"

    return make


# What the shared server's most common refusals mean for a test (JetStream err_code).
_HINTS = {
    10065: "another stream on the shared server already captures some of these subjects "
           "(streams of earlier tests stay); derive the subjects from amebus_unique_name(), "
           "e.g. f\"{stream.lower()}.>\", or take amebus_nats_server_fresh",
    10058: "a stream of this name exists with another configuration; name it with "
           "amebus_unique_name()",
    10148: "a consumer of this name exists with another configuration; name the durable "
           "with amebus_unique_name()",
    10059: "no stream of this name: create it first (streams are not shared between tests)",
}


def _explain(error: BaseException) -> str:
    """One paragraph for a nats-py APIError: the server's words and what to do."""
    from nats.js.errors import APIError

    seen: set[int] = set()
    while error is not None and id(error) not in seen and not isinstance(error, APIError):
        seen.add(id(error))
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    if not isinstance(error, APIError):
        return ""
    text = (f"{type(error).__name__}: the server answered code {error.code}, err_code "
            f"{error.err_code}: {error.description!r}.")
    hint = _HINTS.get(error.err_code or 0)
    return f"{text} {hint}." if hint else text


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
    """Attach the tail of each server log a failed test used to its report, and explain a
    JetStream API error (whose repr is a bare ``BadRequestError()``)."""
    report = yield
    if report.failed and call.excinfo is not None:
        explained = _explain(call.excinfo.value)
        if explained:
            report.sections.append(("amebus: the JetStream API refused a request", explained))
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
