"""Metrics, health and service discovery against real nats-servers: ``amebus run --metrics``
scraped over HTTP in a subprocess and parsed with prometheus_client's own parser, readiness
flipping with the server, the stall detector, and ``$SRV`` answered by two processes."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import attrs
import nats
import pytest
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

import amebus
from amebus.telemetry import BaseObserver, Health, Metrics, Observers, publishing
from amebus.testing import NatsServer
from tests.test_cli import Running, wait_handled

pytest_plugins = ["tests.test_cli"]  # the start / client / out fixtures


async def get(url: str) -> tuple[int, str]:
    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    return await asyncio.to_thread(fetch)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a scrape by (name, labels)."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(scrape: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str,
          **labels: str) -> float | None:
    return scrape.get((name, frozenset(labels.items())))


async def until_ready(base: str, ready: bool, timeout: float = 15) -> dict[str, object]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status, body = await get(base + "/readyz")
        if (status == 200) == ready:
            report: dict[str, object] = json.loads(body)
            assert report["ready"] is ready
            return report
        assert asyncio.get_running_loop().time() < deadline, f"readyz still {status}: {body}"
        await asyncio.sleep(0.1)


async def test_metrics_and_readiness_of_amebus_run(
        nats_server_fresh: NatsServer, client: Client, start: Callable[..., Running],
        out: Path) -> None:
    run = start("tests.cli_services:Flaky", "--server", nats_server_fresh.url,
                "--metrics", "127.0.0.1:0")
    text = await run.wait_for("serving")
    match = re.search(r"metrics and health on (http://127\.0\.0\.1:\d+)", text)
    assert match, text
    base = match.group(1)
    assert await get(base + "/healthz") == (200, "ok\n")
    await until_ready(base, True)
    js = client.jetstream()
    for _ in range(5):
        await js.publish("flaky.ok", b"")
    for _ in range(2):
        await js.publish("flaky.retry", b"")
    await js.publish("flaky.bad", b"")
    await wait_handled(out, 7)
    labels = {"service": "Flaky"}
    expected = {("ok", "acked"): 5, ("retry", "acked"): 2, ("retry", "naked"): 2,
                ("bad", "termed"): 1}
    for _ in range(100):
        status, body = await get(base + "/metrics")
        assert status == 200
        scrape = samples(body)
        got = {key: value(scrape, "amebus_messages_total", **labels, route=key[0],
                          outcome=key[1]) for key in expected}
        if got == expected:
            break
        await asyncio.sleep(0.05)
    assert got == expected
    assert value(scrape, "amebus_messages_total", **labels, route="ok", outcome="naked") == 0
    # delivery attempts: retry's two messages were each delivered twice
    assert value(scrape, "amebus_delivery_attempt_count", **labels, route="retry") == 4
    assert value(scrape, "amebus_delivery_attempt_bucket", **labels, route="retry",
                 le="1.0") == 2
    assert value(scrape, "amebus_handler_seconds_count", **labels, route="ok") == 5
    assert value(scrape, "amebus_failures_total", **labels, route="retry",
                 stage="business") == 2
    where = {**labels, "stream": "FLAKY", "durable": "Flaky"}
    assert value(scrape, "amebus_received_total", **where) == 10
    assert value(scrape, "amebus_in_flight", **where) == 0
    for _ in range(100):  # the lag is polled every 5 s; the first poll is at start
        scrape = samples((await get(base + "/metrics"))[1])
        if value(scrape, "amebus_consumer_num_ack_pending", **where) == 0:
            break
        await asyncio.sleep(0.1)
    assert value(scrape, "amebus_consumer_num_pending", **where) == 0
    assert "subject" not in body  # labels are bounded: never a subject

    await nats_server_fresh.stop()
    report = await until_ready(base, False)
    assert report["checks"]["connection"] == {"ok": False, "detail": "disconnected"}  # type: ignore[index]
    assert await get(base + "/healthz") == (200, "ok\n")  # the process is alive all the same
    await nats_server_fresh.start()
    await until_ready(base, True)
    assert await run.stop() == 0


async def test_the_asgi_app_mounted_below_a_root_path(nc: Client, space: Space) -> None:
    class Mounted(amebus.Service):
        @amebus.Route(space.subject("x"))
        async def x(self, payload: bytes) -> None:
            pass

    metrics = Metrics()
    health = Health(metrics)
    app = health.asgi_app()

    async def call(path: str, root: str = "/ops") -> tuple[int, bytes]:
        sent: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request"}

        async def send(message: dict[str, object]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": root + path, "root_path": root},
                  receive, send)
        return int(sent[0]["status"]), bytes(sent[1]["body"])  # type: ignore[call-overload]

    assert (await call("/readyz"))[0] == 503  # not serving yet
    async with serving(Mounted(), nc, observer=Observers(metrics, health),
                       **space.options()):
        status, body = await call("/readyz")
        assert status == 200, body
        assert json.loads(body)["checks"]["connection"]["ok"] is True
        assert await call("/healthz") == (200, b"ok\n")
        assert b"amebus_in_flight" in (await call("/metrics"))[1]
        assert (await call("/nope"))[0] == 404
    assert (await call("/readyz"))[0] == 503  # stopped


async def test_discovery_across_two_processes_and_amebus_status(
        nats_server_fresh: NatsServer, client: Client, start: Callable[..., Running],
        out: Path) -> None:
    url = nats_server_fresh.url
    runs = [start("tests.cli_services:Flaky", "--server", url, "--metrics", "127.0.0.1:0")
            for _ in range(2)]
    bases = []
    for run in runs:
        text = await run.wait_for("serving")
        match = re.search(r"metrics and health on (http://127\.0\.0\.1:\d+)", text)
        assert match, text
        bases.append(match.group(1))
    from amebus.cli.status import gather

    pings = await gather(client, "$SRV.PING.Flaky", 0.5)
    assert len(pings) == 2 and len({p["id"] for p in pings}) == 2
    assert {p["type"] for p in pings} == {"io.nats.micro.v1.ping_response"}
    infos = await gather(client, "$SRV.INFO", 0.5)
    assert {e["metadata"]["pattern"] for e in infos[0]["endpoints"]} == {
        "flaky.ok", "flaky.retry", "flaky.bad"}
    assert infos[0]["endpoints"][0]["metadata"]["stream"] == "FLAKY"
    js = client.jetstream()
    for _ in range(20):
        await js.publish("flaky.ok", b"")
    for _ in range(3):
        await js.publish("flaky.retry", b"")
    await js.publish("flaky.bad", b"")
    await wait_handled(out, 23)

    def totals(replies: list[dict[str, object]]) -> dict[str, int]:
        sums = {"handled": 0, "acked": 0, "naked": 0, "termed": 0}
        for reply in replies:
            for e in reply["endpoints"]:  # type: ignore[attr-defined]
                sums["handled"] += e["num_requests"]
                for key in ("acked", "naked", "termed"):
                    sums[key] += e["data"][key]
        return sums

    expected = {"handled": 27, "acked": 23, "naked": 3, "termed": 1}  # 20 + 3*2 + 1 runs
    for _ in range(50):
        stats = await gather(client, "$SRV.STATS.Flaky", 0.3)
        if len(stats) == 2 and totals(stats) == expected:
            break
    assert totals(stats) == expected
    # each instance's STATS equals its own Prometheus counters
    outcomes = ("acked", "naked", "termed")
    from_stats = sorted(tuple(sorted((e["name"], *(e["data"][o] for o in outcomes))
                                     for e in s["endpoints"])) for s in stats)
    from_metrics = []
    for base in bases:
        scrape = samples((await get(base + "/metrics"))[1])
        from_metrics.append(tuple(sorted(
            (route, *(int(value(scrape, "amebus_messages_total", service="Flaky", route=route,
                                outcome=o) or 0) for o in outcomes))
            for route in ("ok", "retry", "bad"))))
    assert sorted(from_metrics) == from_stats
    retry = [e for s in stats for e in s["endpoints"] if e["name"] == "retry"]
    assert sum(e["num_errors"] for e in retry) == 3
    assert any("first delivery fails" in (e["last_error"] or "") for e in retry)

    from tests.test_cli import amebus as amebus_cli

    table = await asyncio.to_thread(amebus_cli, "status", "--server", url, "--wait", "0.5")
    assert table.returncode == 0, table.stderr
    for s in stats:
        assert re.search(rf"^Flaky\s+{s['id']}\s+0\.0\.0\s+FLAKY/Flaky\s+3\s", table.stdout,
                         re.M), table.stdout
    assert "2 instance(s)" in table.stdout
    for run in runs:
        assert await run.stop() == 0
    after = await asyncio.to_thread(amebus_cli, "status", "--server", url, "--wait", "0.3")
    assert after.returncode == 1 and "no service answered" in after.stdout


async def test_the_stall_detector_fails_readiness_while_the_server_is_silent(
        nats_server_fresh: NatsServer, space: Space) -> None:
    """A frozen server keeps the TCP connection open and sends nothing: connected, but
    stalled. Readiness fails on silence alone, and comes back once something arrives."""
    class Quiet(amebus.Service):
        @amebus.Route(space.subject("x"))
        async def x(self, payload: bytes) -> None:
            pass

    nc = await nats.connect(nats_server_fresh.url, max_reconnect_attempts=-1)
    health = Health(stall_periods=1.5)  # 7.5 s: longer than the 5 s between idle heartbeats
    pid = nats_server_fresh.pid
    assert pid is not None
    try:
        async with serving(Quiet(), nc, observer=health, **space.options()):
            assert health.readiness()["ready"] is True
            os.kill(pid, signal.SIGSTOP)
            try:
                await eventually(lambda: not health.readiness()["ready"], timeout=15,
                                 what="readiness failing")
                checks = health.readiness()["checks"]
                assert checks["connection"]["ok"] is True  # the socket is still open
                assert checks["receiving"]["ok"] is False
                assert "nothing heard for" in checks["receiving"]["detail"]
            finally:
                os.kill(pid, signal.SIGCONT)
            await nc.jetstream().publish(space.subject("x"), b"")
            await eventually(lambda: health.readiness()["ready"], timeout=10,
                             what="readiness back")
    finally:
        await nc.close()


async def test_timeouts_dead_letters_skipped_and_returned_are_counted(
        nc: Client, space: Space) -> None:
    release = asyncio.Event()
    started: list[str] = []

    class Counted(amebus.Service):
        @amebus.Route(space.subject("slow"), timeout=0.2)
        async def slow(self, payload: bytes) -> None:
            await asyncio.sleep(30)

        @amebus.Route(space.subject("hold"))
        async def hold(self, payload: bytes) -> None:
            started.append("hold")
            await release.wait()

    metrics = Metrics()

    def sample(name: str, route: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(
            name, {"service": "Counted", "route": route, **labels})

    js = nc.jetstream()
    # the routes do not cover the stream: the consumer takes it all, so the dead-letter copy
    # (published into the same stream) comes back unrouted and is skipped
    options = space.options(max_deliver=2, dead_letter_subject=space.subject("dead"),
                            shutdown_timeout=0.2)
    async with serving(Counted(), nc, observer=metrics, **options):
        await js.publish(space.subject("slow"), b"")
        await eventually(lambda: sample("amebus_messages_total", "(none)",
                                        outcome="skipped") == 1, timeout=10,
                         what="the dead-letter copy skipped")
        assert sample("amebus_handler_timeouts_total", "slow") == 2
        assert sample("amebus_messages_total", "slow", outcome="naked") == 1
        assert sample("amebus_messages_total", "slow", outcome="termed") == 1
        assert sample("amebus_dead_lettered_total", "slow") == 1
        assert sample("amebus_delivery_attempt_count", "slow") == 2
        assert sample("amebus_delivery_attempt_sum", "slow") == 3  # deliveries 1 and 2
        for _ in range(3):
            await js.publish(space.subject("hold"), b"")
        await eventually(lambda: started == ["hold"], what="the first hold running")
        await eventually(lambda: metrics.serving is not None
                         and len(metrics.serving.puller.buffer) == 2, what="two buffered")
    # stopped: the running handler was cancelled and the two buffered given back, all nak 0
    assert sample("amebus_messages_total", "hold", outcome="returned") == 1
    assert sample("amebus_messages_total", "(none)", outcome="returned") == 2
    assert sample("amebus_messages_total", "hold", outcome="naked") == 0


async def test_publishes_are_counted_and_timed_by_event_type(nc: Client, space: Space) -> None:
    stored_subject, nowhere = space.subject("in"), f"nowhere{space.prefix}.x"

    @attrs.frozen
    class Incoming(amebus.Event):
        subject = stored_subject
        n: int

    @attrs.frozen
    class Lost(amebus.Event):
        subject = nowhere
        n: int

    class Relay(amebus.Service):
        @amebus.Route(space.subject("start"))
        async def start(self, payload: bytes) -> Incoming:
            return Incoming(0)  # a result event

        @amebus.Route(Incoming)
        async def incoming(self, event: Incoming) -> None:
            pass

    metrics = Metrics()

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    js = nc.jetstream()
    async with serving(Relay(), nc, observer=metrics, **space.options()):
        await js.publish(space.subject("start"), b"")  # plain nats-py: not counted
        await eventually(lambda: sample("amebus_messages_total", service="Relay",
                                        route="incoming", outcome="acked") == 1,
                         what="the result event handled")
        await amebus.publish_many(js, [Incoming(1), Incoming(2), Incoming(3)])
        with pytest.raises(amebus.PublishError):
            await Lost(1).publish(js)
    stored = {"event_type": Incoming.event_type, "outcome": "stored"}
    assert sample("amebus_published_total", **stored) == 4
    assert sample("amebus_published_total", event_type=Lost.event_type, outcome="failed") == 1
    assert sample("amebus_publish_seconds_count", kind="single") == 2
    assert sample("amebus_publish_seconds_count", kind="batch") == 1
    assert publishing.current is None  # stopped serving: publishing is plain again
    await Incoming(4).publish(js)
    assert sample("amebus_published_total", **stored) == 4
    metrics.instrument_publishing()  # a process that only publishes
    try:
        await Incoming(5).publish(js)
    finally:
        metrics.uninstrument_publishing()
    assert sample("amebus_published_total", **stored) == 5
    assert publishing.current is None


async def test_an_observer_that_raises_never_stops_serving(
        nc: Client, space: Space, caplog: pytest.LogCaptureFixture) -> None:
    """Telemetry that raises on every call is logged (once at ERROR) and ignored: every
    message is still handled and settled as amebus decides."""
    handled: list[bytes] = []

    class Broken(BaseObserver):
        def delivery_started(self, msg: object, handler: object) -> None:
            raise RuntimeError("metrics backend down")

        def settled(self, msg: object, decision: object, handler: object) -> None:
            raise RuntimeError("metrics backend down")

    class Served(amebus.Service):
        @amebus.Route(space.subject("in"))
        async def handle(self, payload: bytes) -> None:
            handled.append(payload)

    js = nc.jetstream()
    async with serving(Served(), nc, observer=Broken(), **space.options()):
        for index in range(5):
            await js.publish(space.subject("in"), str(index).encode())
        await eventually(lambda: len(handled) == 5, what="every message handled")
        await settled(js, space, last_seq=5)
    errors = [r for r in caplog.records if "observer" in r.getMessage() and r.levelname == "ERROR"]
    assert len(errors) == 2  # once per failing method
    assert sorted(handled) == [str(i).encode() for i in range(5)]


async def test_readiness_fails_while_a_result_publish_is_refused(
        nc: Client, space: Space) -> None:
    """A handler's result event that no stream stores: the input is nak'ed (kept) and
    readiness fails on "publishing" until a later publish is stored; then it is ready again."""

    @attrs.frozen
    class Shipped(amebus.Event):
        subject = space.subject("out", "shipped")
        order: str

    class Shipper(amebus.Service):
        @amebus.Route(space.subject("in", "*"))
        async def ship(self, payload: bytes) -> Shipped:
            return Shipped(order=payload.decode())

    health = Health()
    js = nc.jetstream()
    out_stream = space.stream + "_OUT"
    options = space.options(stream_subjects=(space.subject("in", ">"),), backoff=(0.2,),
                            max_deliver=20)
    async with serving(Shipper(), nc, observer=health, **options):
        await js.publish(space.subject("in", "o1"), b"o1")
        await eventually(lambda: not health.readiness()["checks"]["publishing"]["ok"],
                         timeout=10, what="readiness failing on the refused result")
        report = health.readiness()
        assert report["ready"] is False
        assert "kept for redelivery" in report["checks"]["publishing"]["detail"]
        await js.add_stream(name=out_stream, subjects=[space.subject("out", ">")])
        try:
            await eventually(lambda: health.readiness()["ready"], timeout=10,
                             what="ready again once the result is stored")
            stored = await js.get_last_msg(out_stream, space.subject("out", "shipped"))
            assert json.loads(stored.data) == {"order": "o1"}
        finally:
            await js.delete_stream(out_stream)
