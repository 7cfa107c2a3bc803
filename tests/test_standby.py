"""Active/standby (``standby = True``: the server pins one instance) and overflow members, on a
real nats-server: one instance handles at a time, a killed one is replaced, nothing is lost,
the pin hooks fire, ``amebus unpin`` moves the pin, overflow members wait for a backlog."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import attrs
import nats
import pytest
from _support import Space, eventually, serving
from nats.aio.client import Client
from nats.js import JetStreamContext

from amebus import ConfigurationError, Overflow, Route, Service
from amebus.priority import consumer_info, unpin

TIMEOUT = 2.0  # the priority timeout of these tests


@attrs.define
class Ledger:
    """Every handling (instance, start, end, payload) and every pin event (instance, event)."""

    handled: list[tuple[str, float, float, str]] = attrs.Factory(list)
    pins: list[tuple[str, str]] = attrs.Factory(list)

    def ids(self, name: str | None = None) -> set[str]:
        return {p for n, _, _, p in self.handled if name is None or n == name}

    def names(self) -> list[str]:
        """The instances in the order they started handling, repeats collapsed."""
        order: list[str] = []
        for name, *_ in sorted(self.handled, key=lambda r: r[1]):
            if not order or order[-1] != name:
                order.append(name)
        return order

    def overlaps(self) -> list[tuple[str, str]]:
        """Pairs of handlings by different instances whose time windows overlap."""
        rows = sorted(self.handled, key=lambda r: r[1])
        return [(a[3], b[3]) for i, a in enumerate(rows) for b in rows[i + 1:]
                if a[0] != b[0] and b[1] < a[2]]


def instance(space: Space, ledger: Ledger, name: str, *, gate: asyncio.Event | None = None,
             **config: Any) -> Service:
    async def handle(payload: bytes) -> None:
        start = time.monotonic()
        await asyncio.sleep(0.005)
        if payload == b"slow" and gate is not None:
            await gate.wait()
        ledger.handled.append((name, start, time.monotonic(), payload.decode()))

    def on_pinned(self: Service, pin_id: str) -> None:
        ledger.pins.append((name, "pinned"))

    async def on_unpinned(self: Service) -> None:
        ledger.pins.append((name, "unpinned"))

    cls: Any = type("Standby", (Service,), {"job": Route(space.subject("job"), handle),
                                            "on_pinned": on_pinned, "on_unpinned": on_unpinned,
                                            **config})
    return cls()  # type: ignore[no-any-return]


@contextlib.asynccontextmanager
async def connections(url: str, n: int) -> AsyncIterator[list[Client]]:
    ncs = [await nats.connect(url, allow_reconnect=False, name=f"i{i}") for i in range(n)]
    try:
        yield ncs
    finally:
        for nc in ncs:
            with contextlib.suppress(Exception):
                await nc.close()


def kill(nc: Client) -> None:
    """Cut the connection as a crashed process would: no UNSUB, no UNPIN, no goodbye."""
    nc._transport._io_writer.transport.abort()  # type: ignore[attr-defined]


async def publish(js: JetStreamContext, space: Space, ids: range) -> None:
    for i in ids:
        await js.publish(space.subject("job"), str(i).encode())


async def server_pin(js: JetStreamContext, space: Space) -> str | None:
    _, fields = await consumer_info(js, space.stream, space.durable)
    return next((s.get("pinned_client_id") for s in fields["state"]), None)


def pin_of(service: Service) -> str | None:
    engine = service._amebus_state().engine
    return engine[1].priority.pin_id if engine and engine[1].priority else None


STANDBY = {"standby": True, "priority_timeout": TIMEOUT}


async def test_one_instance_at_a_time_and_a_killed_one_is_replaced(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    ledger = Ledger()
    services = {name: instance(space, ledger, name) for name in "ABC"}
    async with connections(nats_url, 3) as ncs, contextlib.AsyncExitStack() as stack:
        tasks = {name: await stack.enter_async_context(serving(
            service, nc, reraise=False, **space.options(**STANDBY)))
            for (name, service), nc in zip(services.items(), ncs, strict=True)}
        await publish(js, space, range(60))
        await eventually(lambda: len(ledger.ids()) >= 20, 10, "the first handlings")
        [first] = ledger.names()  # one instance took everything so far
        assert ledger.pins[0] == (first, "pinned")
        assert [s.stats.pinned for s in services.values()] == [n == first for n in "ABC"]
        killed_at = time.monotonic()
        kill(ncs["ABC".index(first)])
        await eventually(lambda: tasks[first].done(), 10, "the killed instance stopping")
        await publish(js, space, range(60, 120))
        await eventually(lambda: ledger.ids() >= {str(i) for i in range(120)}, 30,
                         "every published id handled")
        ledger = Ledger(list(ledger.handled), list(ledger.pins))  # before the others stop
        pinned = [name for name, s in services.items() if s.stats.pinned]
    assert pinned == [ledger.names()[1]]
    order = ledger.names()
    assert len(order) == 2 and order[0] == first and order[1] != first, order
    assert ledger.overlaps() == []  # only one instance handled at any time
    second = order[1]
    taken_over = min(s for n, s, _, _ in ledger.handled if n == second) - killed_at
    # The server moves the pin after TIMEOUT without a pull; a message the killed instance
    # held comes back after ack_wait (2 s): the first handling after the kill needs one.
    assert taken_over < TIMEOUT + space.options()["ack_wait"] + 2.0, taken_over
    assert ledger.pins.count((second, "pinned")) == 1
    assert (first, "unpinned") in ledger.pins  # it stopped serving while pinned
    third = ({"A", "B", "C"} - {first, second}).pop()
    assert not [p for p in ledger.pins if p[0] == third]  # the third stood by throughout


async def test_unpin_moves_the_pin_and_a_423_leaves_a_candidate(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    ledger = Ledger()
    services = [instance(space, ledger, name) for name in "AB"]
    async with connections(nats_url, 2) as ncs, contextlib.AsyncExitStack() as stack:
        for service, nc in zip(services, ncs, strict=True):
            await stack.enter_async_context(serving(service, nc, **space.options(**STANDBY)))
        await publish(js, space, range(10))
        await eventually(lambda: len(ledger.ids()) == 10, 10, "the first ten handled")
        old = await server_pin(js, space)
        holder = next(s for s in services if pin_of(s) == old)
        assert old is not None and [pin_of(s) for s in services].count(old) == 1
        assert await unpin(js, space.stream, space.durable) == old
        await publish(js, space, range(10, 20))  # the old pin's requests are answered 423
        await eventually(lambda: len(ledger.ids()) == 20, 10, "the next ten handled")
        new = await server_pin(js, space)
        assert new not in (None, old)
        assert [pin_of(s) for s in services].count(new) == 1  # one instance holds the new pin
        assert pin_of(holder) in (None, new)  # the old holder cleared the stale id
        for service in services:
            engine = service._amebus_state().engine
            assert engine is not None and engine[1].priority is not None
        losses = sum(s._amebus_state().engine[1].priority.losses  # type: ignore[union-attr]
                     for s in services)
        assert losses == 1  # the 423 (or the re-pin) told the old holder
    assert ledger.ids() == {str(i) for i in range(20)}
    assert ledger.overlaps() == []


async def test_a_lone_instance_answered_423_stays_a_candidate(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    ledger = Ledger()
    service = instance(space, ledger, "A")
    async with connections(nats_url, 1) as [nc], serving(
            service, nc, **space.options(**STANDBY)):
        await publish(js, space, range(5))
        await eventually(lambda: len(ledger.ids()) == 5, 10, "five handled")
        old = pin_of(service)
        await unpin(js, space.stream, space.durable)
        await publish(js, space, range(5, 10))
        await eventually(lambda: len(ledger.ids()) == 10, 10, "ten handled after the unpin")
        assert pin_of(service) not in (None, old)  # cleared on the 423, then pinned anew
    assert ledger.pins[:3] == [("A", "pinned"), ("A", "unpinned"), ("A", "pinned")]


async def test_the_pin_is_kept_while_idle_and_while_busy(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    """Longer than the timeout without messages, then a handler longer than it with the pull
    window full (no pull is due): the keep-alive pulls hold the pin, the standby gets nothing."""
    ledger, gate = Ledger(), asyncio.Event()
    services = [instance(space, ledger, name, gate=gate, batch=2) for name in "AB"]
    async with connections(nats_url, 2) as ncs, contextlib.AsyncExitStack() as stack:
        for service, nc in zip(services, ncs, strict=True):
            await stack.enter_async_context(serving(service, nc, **space.options(
                **STANDBY, ack_wait=30.0)))
        await js.publish(space.subject("job"), b"first")
        await eventually(lambda: len(ledger.handled) == 1, 10, "the first handled")
        await asyncio.sleep(2 * TIMEOUT)  # idle past the timeout
        await js.publish(space.subject("job"), b"slow")
        await publish(js, space, range(4))
        await asyncio.sleep(2 * TIMEOUT)  # busy past the timeout, its window full
        gate.set()
        await eventually(lambda: len(ledger.handled) == 6, 10, "all six handled")
        ledger = Ledger(list(ledger.handled), list(ledger.pins))
    assert len(ledger.names()) == 1, ledger.names()
    assert ledger.pins == [(ledger.names()[0], "pinned")]


async def test_overflow_members_join_only_above_the_threshold(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    ledger = Ledger()
    spill = instance(space, ledger, "spill", overflow=Overflow(min_pending=30))
    primary = instance(space, ledger, "primary", overflow=Overflow(min_pending=30))
    async with connections(nats_url, 2) as ncs, contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(serving(spill, ncs[0], **space.options()))
        await publish(js, space, range(10))
        await eventually(lambda: _waiting(js, space), 10, "the overflow member's request")
        info = await js.consumer_info(space.stream, space.durable)
        assert (info.num_pending, info.num_ack_pending, ledger.handled) == (10, 0, [])
        await publish(js, space, range(10, 50))  # 50 pending >= 30: it joins
        await eventually(lambda: ledger.ids("spill"), 10, "the overflow member handling")
        await stack.enter_async_context(serving(primary, ncs[1], **space.options(
            overflow=Overflow())))  # a primary: no threshold
        await eventually(lambda: ledger.ids() == {str(i) for i in range(50)}, 20,
                         "every published id handled")
    assert ledger.ids("primary")  # below the threshold only the primary took messages
    assert len(ledger.ids("spill")) <= 50 - 30 + 1


async def _waiting(js: JetStreamContext, space: Space) -> bool:
    info = await js.consumer_info(space.stream, space.durable)
    return bool(info.num_waiting)


@pytest.mark.parametrize(("config", "match"), [
    ({"standby": "yes"}, "standby is 'yes'"),
    ({"standby": True, "priority_timeout": 0}, "priority_timeout is 0"),
    ({"overflow": 1000}, r"overflow is 1000; give amebus.Overflow\(min_pending=1000\)"),
    ({"standby": True, "overflow": Overflow()}, "one priority policy"),
])
def test_bad_settings_fail_at_class_creation(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        type("Bad", (Service,), {"r": Route("a.b", lambda payload: None), **config})


def test_a_bad_threshold_fails_where_it_is_written() -> None:
    with pytest.raises(ConfigurationError, match=r"Overflow\(min_pending=0\)"):
        Overflow(min_pending=0)


async def test_an_existing_consumer_without_the_group_is_refused(
        js: JetStreamContext, space: Space) -> None:
    ledger = Ledger()
    async with serving(instance(space, ledger, "plain"), js, **space.options()):
        pass
    with pytest.raises(ConfigurationError, match="does not add, remove or switch a priority"):
        async with serving(instance(space, ledger, "A"), js, **space.options(**STANDBY)):
            pass
    with pytest.raises(ConfigurationError, match="has priority policy 'none'"):
        async with serving(instance(space, ledger, "A"), js, **space.options(
                overflow=Overflow(), provision="bind")):
            pass


async def test_the_priority_timeout_is_updated_in_place(js: JetStreamContext,
                                                        space: Space) -> None:
    ledger = Ledger()
    async with serving(instance(space, ledger, "A"), js, **space.options(**STANDBY)):
        pass
    async with serving(instance(space, ledger, "A"), js, **space.options(
            standby=True, priority_timeout=5.0)):
        _, fields = await consumer_info(js, space.stream, space.durable)
    assert fields["priority_timeout"] == 5_000_000_000


class CliStandby(Service):
    """For ``amebus unpin test_standby:CliStandby --stream ... --durable ...``."""

    standby = True
    job = Route("cli.standby.job", lambda payload: None)


async def test_amebus_unpin_moves_the_pin(js: JetStreamContext, space: Space, nats_url: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from amebus.cli import main

    ledger = Ledger()
    service = instance(space, ledger, "A")
    command = ["unpin", "test_standby:CliStandby", "--server", nats_url,
               "--stream", space.stream, "--durable", space.durable]
    async with serving(service, js, **space.options(**STANDBY)):
        await publish(js, space, range(3))
        await eventually(lambda: len(ledger.ids()) == 3, 10, "three handled")
        old = await server_pin(js, space)
        assert await asyncio.to_thread(main, command) == 0
        assert f"(pin {old})" in capsys.readouterr().out
        await publish(js, space, range(3, 6))
        await eventually(lambda: len(ledger.ids()) == 6, 10, "three more handled")
        assert await server_pin(js, space) not in (None, old)
    assert await asyncio.to_thread(main, command) == 0  # it unpinned itself on stopping
    assert "had no pinned instance" in capsys.readouterr().out
    await js.add_consumer(space.stream, durable_name="plain", ack_policy="explicit")
    assert await asyncio.to_thread(main, [*command[:-1], "plain"]) == 1
    assert "has priority policy 'none', so nothing is pinned" in capsys.readouterr().err


async def test_amebus_status_shows_which_instance_holds_the_pin(
        js: JetStreamContext, space: Space, nats_url: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from amebus.cli import main
    from amebus.telemetry import Discovery

    ledger = Ledger()
    services = [instance(space, ledger, name) for name in "AB"]
    command = ["status", "Pinned", "--server", nats_url, "--wait", "0.5"]
    async with connections(nats_url, 2) as ncs, contextlib.AsyncExitStack() as stack:
        for service, nc in zip(services, ncs, strict=True):
            await stack.enter_async_context(serving(service, nc, **space.options(
                **STANDBY, observer=Discovery("Pinned"))))
        await publish(js, space, range(5))
        await eventually(lambda: len(ledger.ids()) == 5, 10, "five handled")
        holder = await server_pin(js, space)
        assert await asyncio.to_thread(main, [*command, "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert sorted(row["pinned"] for row in rows) == [False, True], rows
        assert [pin_of(s) for s in services].count(holder) == 1
        assert await asyncio.to_thread(main, command) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0].split()[-1] == "PINNED"
        assert sorted(line.split()[-1] for line in table[1:3]) == ["no", "yes"], table


async def test_plan_shows_the_priority_policy_and_refuses_a_change(
        js: JetStreamContext, space: Space) -> None:
    from amebus.plan import plan_service
    from amebus.serving import SERVE_OPTIONS

    ledger = Ledger()
    plain = instance(space, ledger, "plain")
    async with serving(plain, js, **space.options()):
        pass
    standby = type(instance(space, ledger, "A", **STANDBY))
    options = {**{name: getattr(standby, name) for name in SERVE_OPTIONS}, **space.options()}
    plan = await plan_service(js, standby, {**options, **STANDBY})
    rows = {row.field: row for row in plan.rows}
    assert (rows["priority_policy"].server, rows["priority_policy"].wanted) == (
        None, "pinned_client")
    assert rows["priority_timeout"].wanted == TIMEOUT
    assert plan.outcome() == (False, "refuse to serve: priority_policy cannot change in "
                                     f"place; delete the consumer (`nats consumer rm "
                                     f"{space.stream} {space.durable}`)")
    assert "! priority_policy" in plan.render().replace("  ", " ")


@pytest.mark.parametrize(("version", "refused"), [("2.10.24", True), ("2.11.0", False),
                                                  ("2.15.1", False), ("0.0.0", False)])
def test_an_older_server_is_refused(version: str, refused: bool) -> None:
    from nats.aio.client import ServerVersion

    from amebus.priority import check_version, priority_fields

    fields = priority_fields(STANDBY)
    if refused:
        with pytest.raises(ConfigurationError, match=r"Svc.standby needs nats-server 2.11"):
            check_version("Svc", ServerVersion(version), fields)
    else:
        check_version("Svc", ServerVersion(version), fields)
    check_version("Svc", ServerVersion(version), {})  # no priority group: any server


async def test_a_raising_hook_is_logged_and_serving_goes_on(
        js: JetStreamContext, space: Space, caplog: pytest.LogCaptureFixture) -> None:
    ledger = Ledger()

    async def on_pinned(self: Service, pin_id: str) -> None:
        raise RuntimeError("hook failed")

    service = instance(space, ledger, "A", on_pinned=on_pinned)
    async with serving(service, js, **space.options(**STANDBY)):
        await publish(js, space, range(5))
        await eventually(lambda: len(ledger.ids()) == 5, 10, "five handled")
        assert service.stats.pinned
    assert "a pin hook raised" in caplog.text and "hook failed" in caplog.text


async def test_back_after_the_timeout_the_old_pin_is_refused_and_it_stands_by(
        js: JetStreamContext, space: Space, nats_url: str) -> None:
    """The pinned instance's connection is cut and comes back after the timeout: its pulls
    with the old id are answered 423 ("Nats-Pin-Id mismatch"), it clears the id, keeps
    serving as a candidate, and the other instance consumes meanwhile."""
    ledger = Ledger()
    services = {name: instance(space, ledger, name) for name in "AB"}
    # nats-py waits reconnect_time_wait before reconnecting when it connected less than that
    # ago (here: always), so the cut instance comes back after the timeout has moved the pin.
    ncs = [await nats.connect(nats_url, reconnect_time_wait=3 * TIMEOUT, name=n) for n in "AB"]
    try:
        async with contextlib.AsyncExitStack() as stack:
            tasks = {name: await stack.enter_async_context(serving(
                service, nc, **space.options(**STANDBY)))
                for (name, service), nc in zip(services.items(), ncs, strict=True)}
            await publish(js, space, range(10))
            await eventually(lambda: len(ledger.ids()) == 10, 10, "the first ten handled")
            [first] = ledger.names()
            other = ({"A", "B"} - {first}).pop()
            reconnects = ncs["AB".index(first)].stats["reconnects"]
            kill(ncs["AB".index(first)])
            await publish(js, space, range(10, 20))
            await eventually(lambda: ledger.ids() >= {str(i) for i in range(20)}, 20,
                             "every id handled")
            await eventually(lambda: ncs["AB".index(first)].stats["reconnects"] > reconnects,
                             20, "the cut instance reconnecting")
            await eventually(lambda: (first, "unpinned") in ledger.pins, 20, "its 423")
            assert not tasks[first].done()  # still serving: a candidate
            assert services[other].stats.pinned and not services[first].stats.pinned
            ledger = Ledger(list(ledger.handled), list(ledger.pins))
    finally:
        for nc in ncs:
            await nc.close()
    assert ledger.pins[:3] == [(first, "pinned"), (other, "pinned"), (first, "unpinned")]
    assert ledger.overlaps() == []


async def test_a_subject_ending_in_a_k_token_is_handled(js: JetStreamContext, space: Space,
                                                         nats_url: str) -> None:
    """A message's subject is the one it was published on, not the inbox: a last token that
    starts with ``k`` (the keep-alive requests' tag) is an ordinary message."""
    handled: list[str] = []

    async def handle(msg: Any) -> None:
        handled.append(msg.subject)

    cls: Any = type("Kiwi", (Service,), {"any": Route(space.subject(">"), handle)})
    async with connections(nats_url, 1) as [nc], serving(
            cls(), nc, **space.options(**STANDBY)):
        for token in ("kiwi", "k", "7", "k1"):
            await js.publish(space.subject("fruit", token), b"x")
        await eventually(lambda: len(handled) == 4, 10, "four handled")
    assert sorted(handled) == sorted(space.subject("fruit", t) for t in ("kiwi", "k", "7", "k1"))
