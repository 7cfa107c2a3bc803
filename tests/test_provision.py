"""Provisioning against a real nats-server: where a new durable starts (``deliver_policy``),
the metadata amebus marks its consumers with, ``amebus plan`` for a drifted consumer, and the
``provision`` modes leaving an operator's consumer alone."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _support import Space, eventually, serving, settled
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

import amebus
from amebus.errors import ConfigurationError

ROOT = Path(__file__).resolve().parent.parent


def make_service(pattern: str, handled: list[bytes], **config: Any) -> amebus.Service:
    async def handle(payload: bytes) -> None:
        handled.append(payload)

    cls = type("Ledger", (amebus.Service,), {"route": amebus.Route(pattern, handle),
                                         "__module__": __name__, **config})
    return cls()  # type: ignore[no-any-return]


async def publish(js: JetStreamContext, space: Space, *names: str) -> None:
    for name in names:
        await js.publish(space.subject("paid"), name.encode())


class TestDeliverPolicy:
    async def test_new_skips_history(self, js: JetStreamContext, space: Space) -> None:
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        await publish(js, space, "old1", "old2", "old3")
        handled: list[bytes] = []
        service = make_service(space.subject(">"), handled, deliver_policy="new")
        async with serving(service, js, **space.options()):
            await publish(js, space, "new1", "new2")
            await settled(js, space, last_seq=5)
        assert handled == [b"new1", b"new2"]
        info = await js.consumer_info(space.stream, space.durable)
        assert info.config.deliver_policy == DeliverPolicy.NEW

    async def test_start_sequence_and_time(self, js: JetStreamContext, space: Space) -> None:
        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        await publish(js, space, "a", "b", "c")
        handled: list[bytes] = []
        async with serving(make_service(space.subject(">"), handled), js,
                           **space.options(deliver_policy=2)):
            await settled(js, space, last_seq=3)
        assert handled == [b"b", b"c"]
        cut = (await js.get_msg(space.stream, 3)).time
        handled.clear()
        async with serving(make_service(space.subject(">"), handled), js,
                           **space.options(durable=space.durable + "_t", deliver_policy=cut)):
            await eventually(lambda: handled == [b"c"], what="c handled")

    def test_bad_value_fails_at_class_creation(self) -> None:
        with pytest.raises(ConfigurationError, match=r"deliver_policy is 'newest'; use 'all'"):
            make_service("x.>", [], deliver_policy="newest")
        with pytest.raises(ConfigurationError, match=r"timezone-aware"):
            make_service("x.>", [], deliver_policy=dt.datetime(2026, 1, 1))
        with pytest.raises(ConfigurationError, match=r"provision is 'apply'"):
            make_service("x.>", [], provision="apply")


async def ops_consumer(js: JetStreamContext, stream: str, durable: str, subjects: str) -> None:
    """A consumer 'made by ops': not by amebus, and not as the service would make it."""
    await js.add_stream(name=stream, subjects=[subjects])
    await js.add_consumer(stream, ConsumerConfig(
        durable_name=durable, ack_policy=AckPolicy.EXPLICIT, ack_wait=5.0, max_deliver=7,
        deliver_policy=DeliverPolicy.NEW, metadata={"team": "payments"}))


GOLDEN = """\
plan for tests.cli_services.Planned (provision 'update')
stream STREAM: exists
     FIELD     SERVER      WANTED
  =  subjects  ['plan.>']  ['plan.>']
consumer STREAM > DURABLE: exists, not created by amebus
     FIELD            SERVER      WANTED
  =  ack_policy       'explicit'  'explicit'
  ?  deliver_policy   'new'       'all'       applies to a new durable only
  =  replay_policy    'instant'   'instant'
  =  max_waiting      512         512
  ~  ack_wait         5           2           update in place
  ~  max_deliver      7           50          update in place
  =  max_ack_pending  1000        1000
on serve: refuse to serve: the consumer was not created by amebus and ack_wait, \
max_deliver differ; provision 'bind' serves with it as it is, 'adopt' rewrites it
"""


def plan_cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run([sys.executable, "-m", "amebus", "plan",
                           "tests.cli_services:Planned", "--server", url, *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30, check=False)


class TestPlanAndModes:
    async def test_plan_of_a_drifted_consumer(self, js: JetStreamContext, space: Space,
                                              nats_url: str) -> None:
        await ops_consumer(js, space.stream, space.durable, "plan.>")
        names = ("--stream", space.stream, "--durable", space.durable)
        result = plan_cli(nats_url, *names)
        assert result.returncode == 1, result.stderr
        text = result.stdout.replace(space.stream, "STREAM").replace(space.durable, "DURABLE")
        assert text == GOLDEN
        bind = plan_cli(nats_url, *names, "--provision", "bind")
        assert bind.returncode == 0
        assert bind.stdout.splitlines()[-1] == (
            "on serve: serve with the server's configuration as it is (change nothing)")

    async def test_update_refuses_an_operators_consumer_and_adopt_rewrites_it(
            self, js: JetStreamContext, space: Space) -> None:
        await ops_consumer(js, space.stream, space.durable, space.subject(">"))
        service = make_service(space.subject(">"), [])
        with pytest.raises(ConfigurationError, match="was not created by amebus") as caught:
            await service.serve(js, **space.options())
        assert "ack_wait 5.0 -> 2.0" in str(caught.value)
        assert (await js.consumer_info(space.stream, space.durable)).config.ack_wait == 5.0
        async with serving(make_service(space.subject(">"), []), js,
                           **space.options(provision="adopt")):
            config = (await js.consumer_info(space.stream, space.durable)).config
        assert (config.ack_wait, config.max_deliver) == (2.0, 50)
        assert config.metadata is not None and config.metadata["team"] == "payments"
        assert config.metadata["amebus.service"].endswith("Ledger")

    async def test_verify_refuses_drift_and_creates_nothing(self, js: JetStreamContext,
                                                            space: Space) -> None:
        service = make_service(space.subject(">"), [])
        with pytest.raises(ConfigurationError, match=r"stream '\w+' does not exist; provision "
                           r"= 'verify' creates nothing"):
            await service.serve(js, **space.options(provision="verify"))
        await ops_consumer(js, space.stream, space.durable, space.subject(">"))
        with pytest.raises(ConfigurationError, match=r"provision = 'verify' and the server's "
                           r"configuration differs: consumer ack_wait is 5.0, the service "
                           r"wants 2.0"):
            await service.serve(js, **space.options(provision="verify"))
        config = (await js.consumer_info(space.stream, space.durable)).config
        assert (config.ack_wait, config.max_deliver) == (5.0, 7)
        handled: list[bytes] = []
        matching = space.options(provision="verify", ack_wait=5.0, max_deliver=6,
                                   server_max_deliver=7)
        async with serving(make_service(space.subject(">"), handled), js, **matching):
            await publish(js, space, "one")
            await eventually(lambda: handled == [b"one"], what="served once in sync")

    async def test_bind_leaves_an_operators_consumer_untouched(
            self, js: JetStreamContext, space: Space) -> None:
        await ops_consumer(js, space.stream, space.durable, space.subject(">"))
        before = (await js.consumer_info(space.stream, space.durable)).config
        handled: list[bytes] = []
        async with serving(make_service(space.subject(">"), handled), js,
                           **space.options(provision="bind")):
            await publish(js, space, "one", "two")
            await settled(js, space, last_seq=2)
        assert handled == [b"one", b"two"]
        after = (await js.consumer_info(space.stream, space.durable)).config
        assert after == before

    async def test_created_consumer_is_marked(self, js: JetStreamContext,
                                              space: Space) -> None:
        async with serving(make_service(space.subject(">"), []), js, **space.options()):
            config = (await js.consumer_info(space.stream, space.durable)).config
        meta = config.metadata or {}
        assert meta["amebus.service"] == f"{__name__}.Ledger"
        assert meta["amebus.version"] == "0.1.0"
        assert len(meta["amebus.routes"]) == 16
        # The server's own _nats.* keys are there, and a changed setting still updates it.
        assert any(key.startswith("_nats.") for key in meta)
        async with serving(make_service(space.subject(">"), []), js,
                           **space.options(ack_wait=3.0)):
            config = (await js.consumer_info(space.stream, space.durable)).config
        assert config.ack_wait == 3.0


class TestBindErrors:
    """A refused consumer names the real cause, by the server's err_code."""

    async def test_backoff_longer_than_max_deliver(self, js: JetStreamContext,
                                                   space: Space) -> None:
        from nats.js.errors import APIError

        from amebus.provision import bind_error_hint

        await js.add_stream(name=space.stream, subjects=[space.subject(">")])
        with pytest.raises(APIError) as refused:  # the server's own refusal
            await js.add_consumer(space.stream, ConsumerConfig(
                durable_name=space.durable, max_deliver=2, backoff=[1.0, 2.0, 3.0]))
        assert refused.value.err_code == 10116
        cls = type(make_service(space.subject(">"), []))
        hint = bind_error_hint(refused.value, cls, {"max_deliver": 2, "backoff": (1, 2, 3)},
                               space.stream, space.durable)
        assert hint == ("max_deliver (2) must exceed the number of backoff values (3: "
                        "(1, 2, 3)); raise max_deliver or give fewer backoff values")

    def test_overlapping_filters_before_2_12(self) -> None:
        from nats.js.errors import APIError

        from amebus.provision import bind_error_hint

        # nats-server 2.15 accepts overlapping filters, so this refusal is built by hand
        # with the code and text of nats-server 2.11's.
        exc = APIError(code=400, err_code=10138,
                       description="consumer subject filters cannot overlap")
        cls = type(make_service("orders.>", []))
        hint = bind_error_hint(exc, cls, {}, "ORDERS", "Ledger")
        assert "server_filter = 'stream' on Ledger" in hint
        assert "upgrade nats-server to 2.12 or newer" in hint

    async def test_other_refusals_keep_the_generic_hint(self, js: JetStreamContext,
                                                        space: Space) -> None:
        import asyncio

        from nats.js.api import RetentionPolicy

        await js.add_stream(name=space.stream, subjects=[space.subject(">")],
                            retention=RetentionPolicy.WORK_QUEUE)
        await js.add_consumer(space.stream, ConsumerConfig(durable_name="other"))
        service = make_service(space.subject(">"), [])  # a second consumer of the same subjects
        with pytest.raises(ConfigurationError) as caught:
            await asyncio.wait_for(service.serve(js, **space.options()), 10)
        text = str(caught.value)
        assert "the server refused to create consumer" in text and "err_code 10" in text
        assert "check that the stream's subjects include every route pattern" in text
