"""Shared test configuration: the Hypothesis profile, chosen by ``HYPOTHESIS_PROFILE``, and the
``space`` fixture (a stream, durable and subject prefix of the test's own).

- ``ci`` (the default): 100 examples per property, no deadline (CI machines are noisy);
- ``dev`` (alias ``quick``): 20 examples, for a quick edit-test loop;
- ``thorough``: 2,000 examples, before a release or after touching the subject rules.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable

import pytest
from _support import Space
from hypothesis import HealthCheck, settings
from nats.js import JetStreamContext

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

settings.register_profile("ci", max_examples=100, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("quick", max_examples=20, **_COMMON)
settings.register_profile("thorough", max_examples=2_000, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
async def space(js: JetStreamContext, unique_name: Callable[..., str]) -> AsyncIterator[Space]:
    name = unique_name("S")
    yield Space(stream=name, durable=unique_name("D"), prefix=name.lower())
    with contextlib.suppress(Exception):
        await js.delete_stream(name)
