"""Large messages: amebus's byte-bounded pulls against the handler's own limit and a
hand-written loop that sets ``max_bytes``, each in its own process, side by side.

Run ``python -m benchmarks.large [--quick] [--messages N] [--size BYTES] [--pause SECONDS]``
from the repository root. The parent starts nats-server (file storage, 127.0.0.1), stores N
events of SIZE bytes, then each worker consumes them on a durable of its own with a handler
that takes PAUSE seconds, and reports its throughput, peak RSS and disconnects:

- ``amebus``: a Service with one route, default ``max_bytes_in_flight`` (16 MiB);
- ``loop``: one pull request at a time with ``max_bytes`` 16 MiB, each message acked by hand.

"vs limit" is the rate against the handler's own ceiling (1 / PAUSE per second).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import time
from typing import Any

import nats
from nats.aio.msg import Msg

from amebus.testing import NatsServer

__all__ = ["main"]

BUDGET = 16 * 1024 * 1024
APPROACHES = ("amebus", "loop")


async def _amebus(url: str, durable: str, n: int, pause: float) -> dict[str, Any]:
    import amebus

    seen = 0
    done = asyncio.Event()

    async def handle(payload: bytes) -> None:
        nonlocal seen
        await asyncio.sleep(pause)
        seen += 1
        if seen == n:
            done.set()

    class Big(amebus.Service):
        stream = "LARGE"
        route = amebus.Route("large.>", handle)

    nc, disconnects = await _connect(url)
    task = asyncio.create_task(Big().serve(nc.jetstream(), durable=durable))
    start = time.monotonic()
    await done.wait()
    seconds = time.monotonic() - start
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    result = {"seconds": seconds, "count": seen, "disconnects": disconnects[0]}
    await nc.close()
    return result


async def _loop(url: str, durable: str, n: int, pause: float) -> dict[str, Any]:
    nc, disconnects = await _connect(url)
    js = nc.jetstream()
    await js.add_consumer("LARGE", durable_name=durable, ack_policy="explicit")
    queue: asyncio.Queue[Msg | None] = asyncio.Queue()

    async def on_msg(msg: Msg) -> None:
        status = (msg.headers or {}).get("Status")
        if status is None:
            await queue.put(msg)
        elif status != "100":
            await queue.put(None)  # the request ended (batch complete, max bytes, expired)

    inbox = nc.new_inbox()
    await nc.subscribe(inbox, cb=on_msg)
    request = json.dumps({"batch": 256, "max_bytes": BUDGET, "expires": 5_000_000_000}).encode()
    subject = f"$JS.API.CONSUMER.MSG.NEXT.LARGE.{durable}"
    seen = 0
    start = time.monotonic()
    while seen < n:
        await nc.publish(subject, request, reply=inbox)
        while seen < n and (msg := await queue.get()) is not None:
            await asyncio.sleep(pause)
            await msg.ack()
            seen += 1
    seconds = time.monotonic() - start
    result = {"seconds": seconds, "count": seen, "disconnects": disconnects[0]}
    await nc.close()
    return result


async def _connect(url: str) -> tuple[Any, list[int]]:
    disconnects = [0]

    async def on_disconnect() -> None:
        disconnects[0] += 1

    async def quiet(_: Exception) -> None:
        pass

    nc = await nats.connect(url, max_reconnect_attempts=-1, disconnected_cb=on_disconnect,
                            error_cb=quiet)
    return nc, disconnects


def _worker(args: argparse.Namespace) -> int:
    run = _amebus if args.worker == "amebus" else _loop
    report = asyncio.run(run(args.url, args.durable, args.messages, args.pause))
    report["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report), flush=True)
    return 0


async def _fill(url: str, n: int, size: int) -> None:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="LARGE", subjects=["large.>"])
    body = b"x" * size
    for i in range(n):
        await js.publish(f"large.{i}", body)
    await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="100 events, 1 round")
    parser.add_argument("--messages", type=int, help="events in the stream (default 600)")
    parser.add_argument("--size", type=int, default=900_000, help="bytes per event")
    parser.add_argument("--pause", type=float, default=0.005, help="handler seconds")
    parser.add_argument("--rounds", type=int, help="rounds over both approaches (default 2)")
    parser.add_argument("--worker", choices=APPROACHES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--durable", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.messages = args.messages or (100 if args.quick else 600)
    if args.worker:
        return _worker(args)
    rounds = args.rounds or (1 if args.quick else 2)
    with NatsServer(max_payload=max(1024 * 1024, 2 * args.size)) as server:
        asyncio.run(_fill(server.url, args.messages, args.size))
        rows: dict[str, list[dict[str, Any]]] = {name: [] for name in APPROACHES}
        for r in range(rounds):
            for name in APPROACHES[r % 2:] + APPROACHES[:r % 2]:
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.large", "--worker", name, "--url",
                     server.url, "--durable", f"{name}{r}", "--messages", str(args.messages),
                     "--pause", str(args.pause)], capture_output=True, text=True, timeout=600,
                    check=True)
                rows[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
        slow = server.log_path.read_text(errors="replace").count("Slow Consumer")
    mb = args.messages * args.size / 1e6
    print(f"{args.messages} events of {args.size:,} bytes, handler {args.pause * 1000:g} ms, "
          f"{rounds} round(s); server 'Slow Consumer' lines: {slow}\n")
    print(f"{'approach':10} {'msg/s':>8} {'MB/s':>7} {'vs limit':>8} {'RSS MiB':>8} "
          f"{'disconnects':>11}")
    for name, runs in rows.items():
        best = min(runs, key=lambda run: run["seconds"])
        rate = best["count"] / best["seconds"]
        print(f"{name:10} {rate:8.1f} {mb / best['seconds']:7.1f} {rate * args.pause:8.2f} "
              f"{max(run['rss_mib'] for run in runs):8.1f} "
              f"{sum(run['disconnects'] for run in runs):11d}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
