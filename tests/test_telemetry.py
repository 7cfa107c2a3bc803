"""Metrics and health of ``amebus run --metrics``, scraped over HTTP from a subprocess against
a real nats-server and parsed with prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from _support import Space, serving
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

import amebus
from amebus.telemetry import Health, Metrics, Observers
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
