"""The pytest plugin, as another project sees it: namespaced fixtures that leave ``nc`` and
``js`` free, and a JetStream refusal explained instead of a bare ``BadRequestError()``."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

PROJECT_TESTS = '''
import pytest

@pytest.fixture
def nc():  # the project's own fixture of that name: amebus must not shadow or clash with it
    return "the project's nc"

def test_own_nc_is_untouched(nc):
    assert nc == "the project's nc"

async def test_namespaced_fixtures(amebus_js, amebus_unique_name, amebus_nats_url):
    assert amebus_nats_url.startswith("nats://127.0.0.1:")
    stream = amebus_unique_name("ORDERS")
    info = await amebus_js.add_stream(name=stream, subjects=[f"{stream.lower()}.>"])
    assert info.config.name == stream

async def test_overlapping_streams(amebus_js, amebus_unique_name):
    prefix = amebus_unique_name("p")
    await amebus_js.add_stream(name=amebus_unique_name("A"), subjects=[f"{prefix}.>"])
    await amebus_js.add_stream(name=amebus_unique_name("B"), subjects=[f"{prefix}.paid"])
'''


def test_plugin_in_another_project(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\n"
                     "asyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_project=PROJECT_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines([
        "*amebus: the JetStream API refused a request*",
        "BadRequestError: the server answered code 400, err_code 10065: 'subjects overlap "
        "with an existing stream'. another stream on the shared server already captures "
        "some of these subjects*amebus_unique_name()*",
    ])
    result.stdout.no_fnmatch_line("*fixture 'nc' not found*")
