"""Order per key (docs/ordering.md), against a real nats-server.

Each class quotes the rule it checks. What ran is read from the handlers' own ledger (every
start, every success, by message id) and from the server's consumer state, never from mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

import attrs
import nats
import pytest
from _support import Space, eventually, serving, settled
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js import JetStreamContext

import amebus
from amebus import ConfigurationError, Nak, Route, Service
from amebus.telemetry.observer import BaseObserver, Serving
from amebus.testing import NatsServer
from amebus.tracing import Decision


@attrs.frozen
class Placed(amebus.Event):
    subject_pattern = "*.*.*"
    customer: str
    n: int


async def _noop(msg: Msg) -> None:
    return None


_DECODED: Counter[int] = Counter()
"""How many times each ``Counted`` was made (decoded), by its ``n``."""


@attrs.frozen
class Counted(amebus.Event):
    subject_pattern = "*.counted.*"
    customer: str
    n: int

    def __attrs_post_init__(self) -> None:
        _DECODED[self.n] += 1


def _service(routes: dict[str, Route], **attributes: Any) -> type[Service]:
    return type("Keyed", (Service,), {"stream": "ORDERS", **attributes, **routes})


class Ledger:
    """What the handlers saw: starts and successes by id, keys running now, the peaks."""

    def __init__(self) -> None:
        self.starts: Counter[int] = Counter()
        self.successes: list[tuple[str, int]] = []
        self.running: Counter[str] = Counter()
        self.in_flight = 0
        self.max_in_flight = 0
        self.overlaps: list[str] = []  # keys seen running twice at once (must stay empty)
        self.deliveries: dict[int, int] = {}

    async def run(self, key: str, ident: int, msg: Msg, seconds: float, fail: bool,
                  raises: bool = False) -> None:
        self.starts[ident] += 1
        self.deliveries[ident] = msg.metadata.num_delivered
        if self.running[key]:
            self.overlaps.append(key)
        self.running[key] += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(seconds)
            if fail and raises:
                raise RuntimeError("a handler failure: nak'ed with the backoff")
            if fail:
                raise Nak(0.05)
            self.successes.append((key, ident))
        finally:
            self.running[key] -= 1
            self.in_flight -= 1

    def first_successes(self, key: str) -> list[int]:
        seen: list[int] = []
        for k, ident in self.successes:
            if k == key and ident not in seen:
                seen.append(ident)
        return seen


class Settles(BaseObserver):
    """Counts the settlements sent per reply subject, keeps the serving engine."""

    def __init__(self) -> None:
        self.by_reply: Counter[str] = Counter()
        self.actions: Counter[str] = Counter()
        self.serving: Serving | None = None

    async def start(self, serving: Serving) -> None:
        self.serving = serving

    def settled(self, msg: Msg, decision: Decision, handler: Any) -> None:
        self.by_reply[msg.reply] += 1
        self.actions[decision.action] += 1


def _keyed_service(space: Space, ledger: Ledger, plan: dict[int, tuple[float, int]],
                   **attributes: Any) -> Service:
    """Handlers of ``prefix.<key>.<id>``: ``plan[id]`` is (seconds, failures before the
    success); odd ids fail by raising, even ones by ``Nak``."""
    async def handle(msg: Msg) -> None:
        body = json.loads(msg.data)
        seconds, naks = plan.get(body["id"], (0.0, 0))
        await ledger.run(body["key"], body["id"], msg, seconds,
                         fail=ledger.starts[body["id"]] < naks, raises=body["id"] % 2 == 1)

    return _service({"work": Route(f"{space.prefix}.*.*", handle, key=1)},
                    stream=space.stream, **attributes)()


async def _publish(js: JetStreamContext, space: Space, items: list[tuple[str, int]]) -> int:
    seq = 0
    for key, ident in items:
        ack = await js.publish(space.subject(key, str(ident)),
                               json.dumps({"key": key, "id": ident}).encode())
        seq = ack.seq
    return seq


# -- declaring a key ------------------------------------------------------------------------


class TestDeclaration:
    """A key is a subject token position, an event attribute or a function, checked against
    the route's full pattern and events when the class is created."""

    def test_position_past_the_pattern(self) -> None:
        with pytest.raises(ConfigurationError, match=r"key=2 is past the pattern 'orders\.\*'"):
            _service({"a": Route("orders.*", _noop, key=2)})

    def test_position_inside_a_tail_wildcard(self) -> None:
        with pytest.raises(ConfigurationError, match=r"inside the '>'.*position 1"):
            _service({"a": Route("orders.>", _noop, key=2)})
        with pytest.raises(ConfigurationError, match="from the end cannot be known"):
            _service({"a": Route("orders.>", _noop, key=-1)})
        _service({"a": Route("orders.>", _noop, key=1)})  # the first token of '>' is known

    def test_position_on_a_literal_token(self) -> None:
        with pytest.raises(ConfigurationError, match=r"literal token 'paid'.*position 2"):
            _service({"a": Route("orders.paid.*", _noop, key=1)})

    def test_positions_count_router_prefixes_and_from_the_end(self) -> None:
        router = amebus.Router("shop", a=Route("orders.*", _noop, key=2))
        _service({"shop": router})
        _service({"a": Route("orders.*.x", _noop, key=-2)})
        with pytest.raises(ConfigurationError, match="key=1 is the literal token 'orders'"):
            _service({"shop": amebus.Router("shop", a=Route("orders.*", _noop, key=1))})

    def test_attribute_must_be_a_field_of_the_event(self) -> None:
        async def placed(event: Placed) -> None:
            return None

        _service({"a": Route("*.placed.*", placed, key="customer")})
        with pytest.raises(ConfigurationError,
                           match=r"Placed has no attribute 'client'.*customer, n"):
            _service({"a": Route("*.placed.*", placed, key="client")})
        with pytest.raises(ConfigurationError, match="the handler takes the message"):
            _service({"a": Route("*.placed.*", _noop, key="customer")})

    def test_a_batch_route_takes_no_key_and_the_service_wide_key_skips_it(self) -> None:
        async def batched(events: list[Placed]) -> None:
            return None

        with pytest.raises(ConfigurationError, match=r"has batch= and key=1.*drop key="):
            _service({"a": Route("*.placed.*", batched, batch=10, key=1)})
        service = _service({"a": Route("*.placed.*", batched, batch=10),
                            "b": Route("orders.*", _noop)}, key=1)
        from amebus.dispatch import dispatch_of
        from amebus.ordering import KeyOrder

        dispatch = dispatch_of(service())
        assert dispatch is not None
        order = KeyOrder.of("Keyed", dispatch.handlers.values(), 1)
        assert order is not None and set(order.keys) == {"b"}  # the batch route is not keyed

    @pytest.mark.parametrize("bad", [True, 1.5, "not a name", b"x", ("a",)])
    def test_a_key_of_another_kind(self, bad: object) -> None:
        with pytest.raises(ConfigurationError, match="give a subject token position"):
            Route("orders.*", _noop, key=bad)  # type: ignore[arg-type]

    def test_service_wide_key_checked_for_every_route_without_its_own(self) -> None:
        with pytest.raises(ConfigurationError,
                           match=r"route b .* service-wide key=1 .*declare key= on the routes"):
            _service({"a": Route("orders.*", _noop), "b": Route("invoices", _noop)}, key=1)
        _service({"a": Route("orders.*", _noop), "b": Route("invoices.*.*", _noop, key=2)},
                 key=1)
        with pytest.raises(ConfigurationError, match=r"Keyed key=3\.5: give"):
            _service({"a": Route("orders.*", _noop)}, key=3.5)

    async def test_serve_key_override_is_checked(self, js: JetStreamContext,
                                                 space: Space) -> None:
        service = _service({"a": Route(f"{space.prefix}.*", _noop)}, stream=space.stream)()
        with pytest.raises(ConfigurationError, match="key=5 is past the pattern"):
            await service.serve(js, **space.options(key=5))


# -- the property ---------------------------------------------------------------------------


@st.composite
def workloads(draw: st.DrawFn) -> tuple[int, list[tuple[str, float, int]]]:
    """A concurrency, and messages in stream order: (key, handler seconds, failures before
    it succeeds)."""
    keys = draw(st.integers(1, 4))
    message = st.tuples(st.integers(0, keys - 1).map(lambda k: f"k{k}"),
                        st.sampled_from([0.0, 0.001, 0.004, 0.01]),
                        st.sampled_from([0, 0, 0, 1, 2]))
    return draw(st.integers(2, 6)), draw(st.lists(message, min_size=1, max_size=24))


class TestOrderPerKey:
    """Messages with the same key run one at a time in stream order (a nak'ed one holds its
    key until it succeeds); none is lost; different keys run concurrently."""

    @settings(max_examples=10, deadline=None)
    @given(workload=workloads())
    def test_property(self, nats_server: NatsServer,
                      workload: tuple[int, list[tuple[str, float, int]]]) -> None:
        asyncio.run(self._scenario(nats_server.url, *workload))

    async def _scenario(self, url: str, concurrency: int,
                        workload: list[tuple[str, float, int]]) -> None:
        nc = await nats.connect(url)
        js = nc.jetstream()
        name = f"P{os.urandom(5).hex()}"
        space = Space(stream=name, durable="D", prefix=name.lower())
        try:
            ledger = Ledger()
            plan = {i: (seconds, naks) for i, (_, seconds, naks) in enumerate(workload)}
            service = _keyed_service(space, ledger, plan)
            items = [(key, i) for i, (key, _, _) in enumerate(workload)]
            async with serving(service, js, **space.options(concurrency=concurrency,
                                                            max_deliver=5)):
                last = await _publish(js, space, items)
                await eventually(lambda: {i for _, i in ledger.successes} == set(plan),
                                 timeout=20, what="every message handled")
                await settled(js, space, last, timeout=10)
            assert not ledger.overlaps, f"keys ran twice at once: {ledger.overlaps}"
            for key in {k for k, _ in items}:
                published = [i for k, i in items if k == key]
                assert ledger.first_successes(key) == published, key
            for i, (_, _, naks) in enumerate(workload):  # nothing skipped, nothing extra
                assert ledger.starts[i] >= naks + 1
        finally:
            with contextlib.suppress(Exception):
                await js.delete_stream(space.stream)
            await nc.close()

    async def test_keys_run_concurrently(self, js: JetStreamContext, space: Space) -> None:
        ledger = Ledger()
        items = [(f"k{i % 4}", i) for i in range(20)]
        service = _keyed_service(space, ledger, {i: (0.05, 0) for _, i in items})
        async with serving(service, js, **space.options(concurrency=4)):
            last = await _publish(js, space, items)
            await settled(js, space, last, timeout=10)
        assert ledger.max_in_flight > 1
        assert not ledger.overlaps
        for key in {k for k, _ in items}:
            assert ledger.first_successes(key) == [i for k, i in items if k == key]

    async def test_attribute_and_function_keys(self, js: JetStreamContext,
                                               space: Space) -> None:
        seen: dict[str, list[tuple[str, int]]] = defaultdict(list)
        running: Counter[tuple[str, str]] = Counter()  # the keys differ: 'c0' and 'C0'
        overlaps: list[tuple[str, str]] = []

        def recorder(route: str) -> Callable[[Placed], Any]:
            async def handle(event: Placed) -> None:
                key = (route, event.customer)
                if running[key]:
                    overlaps.append(key)
                running[key] += 1
                await asyncio.sleep(0.01)
                running[key] -= 1
                seen[route].append((event.customer, event.n))
            return handle

        service = _service({
            "by_attribute": Route(f"{space.prefix}.placed.*", recorder("attribute"),
                                  key="customer"),
            "by_function": Route(f"{space.prefix}.other.*", recorder("function"),
                                 key=lambda event: event.customer.upper())},
            stream=space.stream)()
        async with serving(service, js, **space.options(concurrency=6)):
            for n in range(12):
                for kind in ("placed", "other"):
                    body = {"customer": f"c{n % 3}", "n": n}
                    await js.publish(space.subject(kind, str(n)), json.dumps(body).encode())
            await eventually(lambda: sum(len(v) for v in seen.values()) == 24, timeout=10)
        assert not overlaps
        for route in ("attribute", "function"):
            for customer in ("c0", "c1", "c2"):
                got = [n for c, n in seen[route] if c == customer]
                assert got == sorted(got) and len(got) == 4, (route, customer)

    async def test_an_attribute_key_decodes_each_message_once(self, js: JetStreamContext,
                                                               space: Space) -> None:
        decoded = _DECODED
        decoded.clear()
        handled: list[int] = []

        async def handle(event: Counted) -> None:
            await asyncio.sleep(0.005)  # others of the key are parked meanwhile
            handled.append(event.n)

        service = _service({"a": Route(f"{space.prefix}.counted.*", handle, key="customer")},
                           stream=space.stream)()
        async with serving(service, js, **space.options(concurrency=4)):
            for n in range(20):
                body = {"customer": f"c{n % 2}", "n": n}
                await js.publish(space.subject("counted", str(n)), json.dumps(body).encode())
            await eventually(lambda: len(handled) == 20, timeout=10)
        # Once for the key and the handler together when it runs at once; a parked message is
        # decoded again when it starts (another message was decoded in between).
        assert sorted(handled) == list(range(20))
        assert all(1 <= decoded[n] <= 2 for n in range(20)), decoded
        assert decoded[0] == decoded[1] == 1  # each the first of its key: ran at once

    async def test_a_termed_message_frees_its_key(self, js: JetStreamContext,
                                                  space: Space) -> None:
        """Rule: a termed message is settled: the key's next message runs, no hold."""
        ledger = Ledger()
        termed: list[int] = []

        async def handle(msg: Msg) -> None:
            body = json.loads(msg.data)
            if body["id"] == 0:
                termed.append(0)
                raise amebus.Term("not this one")
            await ledger.run(body["key"], body["id"], msg, 0.01, fail=False)

        service = _service({"work": Route(f"{space.prefix}.*.*", handle, key=1)},
                           stream=space.stream)()
        async with serving(service, js, **space.options(concurrency=3, ack_wait=30.0)):
            last = await _publish(js, space, [("k", 0), ("k", 1), ("k", 2)])
            await settled(js, space, last, timeout=10)  # well before a 30 s hold would end
        assert termed == [0]
        assert ledger.first_successes("k") == [1, 2]

    async def test_serve_key_override(self, js: JetStreamContext, space: Space) -> None:
        ledger = Ledger()

        async def handle(msg: Msg) -> None:
            body = json.loads(msg.data)
            await ledger.run(body["key"], body["id"], msg, 0.02, fail=False)

        service = _service({"work": Route(f"{space.prefix}.*.*", handle)},
                           stream=space.stream)()
        items = [(f"k{i % 2}", i) for i in range(10)]
        async with serving(service, js, **space.options(concurrency=4, key=1)):
            last = await _publish(js, space, items)
            await settled(js, space, last, timeout=10)
        assert not ledger.overlaps
        assert ledger.first_successes("k0") == [0, 2, 4, 6, 8]


# -- parked messages --------------------------------------------------------------------------


class TestParked:
    """A message waiting for its key is kept alive by in-progress signals, counts against the
    pull window, and is given back (uncounted, settled once) when serving stops."""

    async def test_kept_alive_while_parked(self, js: JetStreamContext, space: Space) -> None:
        ledger = Ledger()
        items = [("k", 0), ("k", 1), ("k", 2)]
        service = _keyed_service(space, ledger, {0: (2.5, 0)})  # 2.5 x ack_wait
        async with serving(service, js, **space.options(concurrency=3, ack_wait=1.0)):
            last = await _publish(js, space, items)
            await settled(js, space, last, timeout=10)
        assert ledger.first_successes("k") == [0, 1, 2]
        assert ledger.deliveries == {0: 1, 1: 1, 2: 1}, "a parked message was redelivered"

    async def test_shutdown_gives_parked_back(self, js: JetStreamContext, space: Space) -> None:
        ledger = Ledger()
        items = [("k", i) for i in range(5)] + [("other", 5)]
        settles = Settles()
        first = _keyed_service(space, ledger, {0: (60.0, 0)}, observer=settles)
        async with serving(first, js, **space.options(concurrency=3, shutdown_timeout=0.2)):
            await _publish(js, space, items)
            assert settles.serving is not None
            parked = settles.serving.consumer.parked
            await eventually(lambda: len(parked) == 4 and ledger.successes == [("other", 5)],
                             what="4 messages parked behind key k")
        assert not parked
        assert all(count == 1 for count in settles.by_reply.values()), settles.by_reply
        assert settles.actions == {"nak": 5, "ack": 1}  # 0 cancelled, 1-4 parked: given back
        assert ledger.starts == {0: 1, 5: 1}
        again = _keyed_service(space, ledger, {})
        async with serving(again, js, **space.options(concurrency=3)):
            await settled(js, space, timeout=10)
        # Redelivered at once (not after ack_wait), every one: nothing lost. Their order is
        # the server's redelivery order, not promised across a restart (docs/ordering.md).
        assert sorted(ledger.first_successes("k")) == [0, 1, 2, 3, 4]
        assert {i for _, i in ledger.successes} == set(range(6))
        assert {i: ledger.deliveries[i] for i in range(5)} == dict.fromkeys(range(5), 2)
        assert not ledger.overlaps

    async def test_pull_stays_bounded(self, js: JetStreamContext, space: Space) -> None:
        ledger = Ledger()
        items = [("hot", i) for i in range(40)] + [("cold", 40)]
        settles = Settles()
        service = _keyed_service(space, ledger, {i: (0.005, 0) for i in range(41)},
                                 observer=settles)
        peaks = {"window": 0, "ack_pending": 0}

        async def sample() -> None:
            while True:
                if settles.serving is not None:
                    puller = settles.serving.puller
                    peaks["window"] = max(peaks["window"], puller.pending + puller.waiting)
                info = await js.consumer_info(space.stream, space.durable)
                peaks["ack_pending"] = max(peaks["ack_pending"], info.num_ack_pending)
                await asyncio.sleep(0.005)

        async with serving(service, js, **space.options(concurrency=2, batch=8)):
            sampler = asyncio.create_task(sample())
            last = await _publish(js, space, items)
            await settled(js, space, last, timeout=15)
            sampler.cancel()
        assert ledger.first_successes("hot") == list(range(40))
        assert peaks["ack_pending"] > 2  # the sampler saw messages held
        assert peaks["window"] <= 8
        assert peaks["ack_pending"] <= 8 + 2  # the window, plus the handlers running

    async def test_a_full_window_releases_a_held_key(self, js: JetStreamContext,
                                                     space: Space) -> None:
        """Rule: a held key is released at once when the window is full of parked messages
        (the nak'ed one cannot come back then), not after its delay plus ack_wait."""
        ledger = Ledger()
        items = [("hot", i) for i in range(12)]

        async def handle(msg: Msg) -> None:
            body = json.loads(msg.data)
            if body["id"] == 0 and ledger.starts[0] == 0:
                ledger.starts[0] += 1
                raise Nak(2.0)  # held: 2 s + ack_wait 30 s, unless the window frees it
            await ledger.run(body["key"], body["id"], msg, 0.0, fail=False)

        service = _service({"work": Route(f"{space.prefix}.*.*", handle, key=1)},
                           stream=space.stream)()
        async with serving(service, js, **space.options(concurrency=2, batch=4,
                                                        ack_wait=30.0)):
            await _publish(js, space, items)
            await eventually(lambda: len({i for _, i in ledger.successes}) == 12, timeout=15,
                             what="every message handled (well before 32 s)")
        assert not ledger.overlaps
        assert ledger.first_successes("hot")[:3] == [1, 2, 3]  # released out of order
