"""I/O-bound handlers: does ``serve`` scale with ``concurrency`` until the CPU is the limit?

``python -m benchmarks.concurrency [--quick] [--wait-ms 10] [--levels 1,4,16,64,256]``

Each handler awaits ``asyncio.sleep(wait)`` (a stand-in for a database or HTTP call). For each
concurrency level a fresh durable consumes enough messages for about two seconds of ideal
work; the table shows msgs/s, the ideal ``concurrency / wait``, their ratio, and CPU per
message (where the ratio falls while CPU per message stays flat, the CPU is the limit).

The ``asyncio`` column is the ceiling measured in the same run: ``concurrency`` bare tasks
doing nothing but ``await asyncio.sleep(wait)`` for as long, as a ratio of the same ideal (the
event loop wakes timers late: epoll's timeout is in whole milliseconds, rounded up), and
``of asyncio`` is amebus's ratio over it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import time

import nats

import amebus
from amebus.testing import NatsServer


def _service(stream: str, wait: float, total: int, done: asyncio.Event) -> amebus.Service:
    handled = 0

    async def handle(data: bytes) -> None:
        nonlocal handled
        await asyncio.sleep(wait)
        handled += 1
        if handled == total:
            done.set()

    class Waiting(amebus.Service):
        work = amebus.Route("work.*", handle)

    Waiting.stream = stream
    return Waiting()


async def _level(js: nats.js.JetStreamContext, stream: str, level: int, wait: float,
                 seconds: float) -> dict[str, float]:
    total = max(50, int(level / wait * seconds))
    payload = json.dumps({"n": 0}).encode()
    for i in range(total):
        await js.publish_async(f"work.{i % 16}", payload)
    await js.publish_async_completed()
    done = asyncio.Event()
    service = _service(stream, wait, total, done)
    ready = asyncio.Event()
    cpu, start = time.process_time(), time.perf_counter()
    task = asyncio.create_task(service.serve(js, ready=ready, durable=f"c{level}",
                                             concurrency=level))
    await asyncio.wait_for(done.wait(), timeout=total * wait + 60)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await js.purge_stream(stream)
    rate = total / elapsed
    ideal = level / wait
    return {"concurrency": level, "messages": total, "rate": rate, "ideal": ideal,
            "efficiency": rate / ideal, "cpu_us": cpu / total * 1e6}


async def _ceiling(level: int, wait: float, seconds: float) -> float:
    """Sleeps per second of ``level`` tasks doing nothing else, as a ratio of the ideal."""
    count, stop = 0, time.perf_counter() + seconds

    async def sleeper() -> None:
        nonlocal count
        while time.perf_counter() < stop:
            await asyncio.sleep(wait)
            count += 1

    start = time.perf_counter()
    await asyncio.gather(*(sleeper() for _ in range(level)))
    return count / (time.perf_counter() - start) / (level / wait)


async def _main(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    wait = args.wait_ms / 1000
    async with NatsServer() as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await js.add_stream(name="WAIT", subjects=["work.*"])
        print(f"handlers wait {args.wait_ms:g} ms; about {args.seconds:g} s of ideal work each")
        print(f"{'concurrency':>11} {'messages':>8} {'msgs/s':>9} {'ideal':>9} {'ratio':>6} "
              f"{'CPU µs/msg':>10} {'asyncio':>7} {'of asyncio':>10}")
        for level in levels:
            row = await _level(js, "WAIT", level, wait, args.seconds)
            ceiling = await _ceiling(level, wait, args.seconds)
            print(f"{row['concurrency']:>11} {row['messages']:>8} {row['rate']:>9,.0f} "
                  f"{row['ideal']:>9,.0f} {row['efficiency']:>6.2f} {row['cpu_us']:>10.1f} "
                  f"{ceiling:>7.2f} {row['efficiency'] / ceiling:>10.2f}")
        await nc.close()


def main(argv: list[str] | None = None) -> None:
    """Run the concurrency benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="levels 1,8,64 and 0.5 s each")
    parser.add_argument("--wait-ms", type=float, default=10.0, help="handler wait (10 ms)")
    parser.add_argument("--levels", default="1,4,16,64,256,1024")
    parser.add_argument("--seconds", type=float, default=2.0, help="ideal seconds per level")
    args = parser.parse_args(argv)
    if args.quick:
        args.levels, args.seconds = "1,8,64", 0.5
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
