"""Shared test configuration: the Hypothesis profile, chosen by ``HYPOTHESIS_PROFILE``.

- ``ci`` (the default): 100 examples per property, no deadline (CI machines are noisy);
- ``dev`` (alias ``quick``): 20 examples, for a quick edit-test loop;
- ``thorough``: 2,000 examples, before a release or after touching the subject rules.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}

settings.register_profile("ci", max_examples=100, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=20, **_COMMON)
settings.register_profile("quick", max_examples=20, **_COMMON)
settings.register_profile("thorough", max_examples=2_000, print_blob=True, **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
