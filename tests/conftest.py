"""Shared test configuration: the Hypothesis profile, chosen by ``HYPOTHESIS_PROFILE``, and the
``space`` fixture (a stream, durable and subject prefix of the test's own).

- ``ci`` (the default): 100 examples per property, no deadline (CI machines are noisy);
- ``dev`` (alias ``quick``): 20 examples, for a quick edit-test loop;
- ``thorough``: 2,000 examples, before a release or after touching the subject rules.

The amebus pytest plugin names its fixtures ``amebus_*``; this suite keeps the short names
(``nats_server``, ``nats_server_fresh``, ``nats_url``, ``nc``, ``js``, ``unique_name``) as
aliases of them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable

import pytest
from _support import Space
from hypothesis import HealthCheck, settings
from nats.aio.client import Client
from nats.js import JetStreamContext

from amebus.testing import NatsServer

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

settings.register_profile("ci", max_examples=100, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("quick", max_examples=20, **_COMMON)
settings.register_profile("thorough", max_examples=2_000, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def nats_server(amebus_nats_server: NatsServer) -> NatsServer:
    return amebus_nats_server


@pytest.fixture
def nats_server_fresh(amebus_nats_server_fresh: NatsServer) -> NatsServer:
    return amebus_nats_server_fresh


@pytest.fixture
def nats_url(amebus_nats_url: str) -> str:
    return amebus_nats_url


@pytest.fixture
def nc(amebus_nc: Client) -> Client:
    return amebus_nc


@pytest.fixture
def js(amebus_js: JetStreamContext) -> JetStreamContext:
    return amebus_js


@pytest.fixture
def unique_name(amebus_unique_name: Callable[..., str]) -> Callable[..., str]:
    return amebus_unique_name


@pytest.fixture
async def space(js: JetStreamContext, unique_name: Callable[..., str]) -> AsyncIterator[Space]:
    name = unique_name("S")
    yield Space(stream=name, durable=unique_name("D"), prefix=name.lower())
    with contextlib.suppress(Exception):
        await js.delete_stream(name)
