"""CPU-bound handlers: does ``amebus run --workers 2`` beat one process?

``python -m benchmarks.workers [--quick] [--messages 600] [--work-ms 5] [--rounds 2]``

Each handler burns about ``--work-ms`` of CPU in pure Python (one process can use one core:
the GIL). For each round, ``amebus run --workers 1`` and ``--workers 2`` (interleaved) serve a
fresh stream on one nats-server; once every worker says it is serving, the messages are
published, and the time runs from the first publish until every message was handled (counted
in a ledger file the handlers append to). The table shows msgs/s per worker count and the
ratio 2 / 1 (the goal of issue 15: >= 1.5x on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import nats

import amebus
from amebus.testing import NatsServer

__all__ = ["Crunch", "main"]

ROOT = Path(__file__).resolve().parent.parent


def _burn(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i * i % 7
    return total


class Crunch(amebus.Service):
    """The benchmark's service: ``loops`` from the payload, one ledger line per message."""

    stream = "BENCH_WORKERS"
    stream_subjects = ("crunch.>",)
    durable = "crunch"

    def __init__(self) -> None:
        path = os.environ["AMEBUS_BENCH_LEDGER"]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    @amebus.Route("crunch.*")
    async def crunch(self, payload: bytes) -> None:
        _burn(int(payload))
        os.write(self._fd, b"1\n")


def _loops_for(work_ms: float) -> int:
    """How many ``_burn`` loops take about ``work_ms`` here (measured, in this process)."""
    loops = 10_000
    started = time.perf_counter()
    _burn(loops)
    elapsed = time.perf_counter() - started
    return max(1, int(loops * work_ms / 1000 / elapsed))


async def _round(url: str, workers: int, messages: int, loops: int, tmp: Path) -> float:
    ledger = tmp / f"ledger-{workers}-{time.monotonic_ns()}"
    ledger.touch()
    env = dict(os.environ, AMEBUS_BENCH_LEDGER=str(ledger), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "amebus", "run", "benchmarks.workers:Crunch", "--server", url,
         "--workers", str(workers), "--status-interval", "0", "--no-discovery"],
        cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    try:
        serving = 0
        for line in proc.stderr:
            serving += bool(re.search(r"\] .* serving ", line))
            if serving == workers:
                break
        else:
            msg = f"amebus run --workers {workers} ended before serving"
            raise RuntimeError(msg)
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            started = time.perf_counter()
            acks = [js.publish(f"crunch.{n}", str(loops).encode()) for n in range(messages)]
            await asyncio.gather(*acks)
            while ledger.stat().st_size < 2 * messages:
                await asyncio.sleep(0.005)
            elapsed = time.perf_counter() - started
            await js.delete_stream(Crunch.stream)
        finally:
            await nc.close()
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    return messages / elapsed


async def _main(args: argparse.Namespace) -> None:
    loops = _loops_for(args.work_ms)
    rates: dict[int, list[float]] = {1: [], 2: []}
    with TemporaryDirectory() as tmp:
        async with NatsServer() as server:
            for _ in range(args.rounds):
                for workers in (1, 2):
                    rates[workers].append(await _round(server.url, workers, args.messages,
                                                       loops, Path(tmp)))
    print(f"CPU-bound handler: {loops} loops (~{args.work_ms:g} ms), {args.messages} messages, "
          f"{args.rounds} rounds, {os.cpu_count()} CPUs")
    print("workers   median msg/s  all")
    for workers, seen in rates.items():
        cells = ", ".join(f"{rate:,.0f}" for rate in seen)
        print(f"{workers:>7}  {statistics.median(seen):>13,.0f}  {cells}")
    ratio = statistics.median(rates[2]) / statistics.median(rates[1])
    print(f"ratio 2 workers / 1 worker: {ratio:.2f}x (goal: >= 1.5x on 2 cores)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 messages, 1 round")
    parser.add_argument("--messages", type=int, default=600)
    parser.add_argument("--work-ms", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.rounds = 200, 1
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
