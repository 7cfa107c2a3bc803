"""Soak: push many messages through one serving process and watch its memory and queues.

Run ``python -m benchmarks.soak [--messages 500000] [--concurrency 8] [--json PATH]
[--csv PATH]`` from the repository root. The parent starts nats-server (127.0.0.1, file
store) with a work-queue stream, spawns one child that serves an amebus Service, and
publishes the messages in acked batches while keeping the backlog under ``--backlog``.
The child samples itself every ``--every`` seconds: handled count, RSS, handlers in flight
and messages buffered by the pull engine. At the end the parent checks:

- every message was handled, and the durable has nothing pending and nothing unacked;
- RSS at the end is within ``--rss-growth`` (10%) of RSS once a third of the messages were
  handled (the warm-up);
- in flight never exceeded the concurrency and buffered never exceeded the pull batch.

It prints the curve (about 20 rows), writes every sample to ``--json``/``--csv`` if given,
and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import attrs
from nats.aio.msg import Msg

from amebus import Event, Route, Service, publish_many

__all__ = ["Soak", "Tick", "main", "summarize"]

_ROOT = Path(__file__).resolve().parents[1]
STREAM = "SOAK"
DURABLE = "soak"


def _rss() -> int:
    try:
        import psutil
    except ImportError:  # Linux without psutil: resident pages from /proc
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    return int(psutil.Process().memory_info().rss)


# -- the serving child --------------------------------------------------------------------------


async def _serve(args: argparse.Namespace) -> int:
    import nats

    service = Soak()
    service.work = args.work
    nc = await nats.connect(args.serve, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
    ready = asyncio.Event()
    task = asyncio.create_task(service.serve(nc.jetstream(), ready=ready,
                                             concurrency=args.concurrency, batch=args.batch))
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    began = time.monotonic()
    with open(args.samples, "a", buffering=1) as out:  # line-buffered: one line per sample

        async def sample() -> None:
            while True:
                stats = service.stats
                out.write(json.dumps({
                    "t": round(time.monotonic() - began, 3), "handled": stats.total().handled,
                    "received": stats.received, "in_flight": stats.in_flight,
                    "buffered": stats.buffered, "rss": _rss(), "ready": ready.is_set(),
                }) + "\n")
                await asyncio.sleep(args.every)

        sampler = asyncio.create_task(sample())
        with contextlib.suppress(asyncio.CancelledError):
            await task
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    await nc.close()
    return 0


@attrs.frozen
class Tick(Event):
    """The soak's event: about 120 bytes of JSON."""

    subject_pattern = "soak.tick.*"
    event_type = "amebus.soak.Tick"

    n: int
    customer: str
    amount_cents: int
    tags: list[str]

    def subject(self) -> tuple[str, ...]:
        return ("soak", "tick", str(self.n % 64))


class Soak(Service):
    """One route: decode the Tick, wait ``work`` seconds (an I/O call, say), ack."""

    stream = STREAM
    durable = DURABLE
    work = 0.001

    @Route(Tick)
    async def tick(self, tick: Tick, msg: Msg) -> None:
        await asyncio.sleep(self.work)


# -- the parent ----------------------------------------------------------------------------------


def _tick(n: int) -> Tick:
    return Tick(n=n, customer=f"customer-{n % 997:04d}", amount_cents=1000 + n * 37 % 90_000,
                tags=["soak", f"batch-{n // 1000}"])


def _last_sample(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            file.seek(0, os.SEEK_END)
            file.seek(max(0, file.tell() - 4096))
            lines = file.read().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        with contextlib.suppress(ValueError):
            return dict(json.loads(line))
    return {}


async def _run(args: argparse.Namespace, samples_path: Path) -> dict[str, Any]:
    import nats
    from nats.js.api import RetentionPolicy, StorageType, StreamConfig

    from amebus.testing import NatsServer

    async with NatsServer(name="amebus-soak") as server:
        nc = await nats.connect(server.url)
        js = nc.jetstream(timeout=10)
        await js.add_stream(StreamConfig(name=STREAM, subjects=["soak.>"],
                                         storage=StorageType.FILE,
                                         retention=RetentionPolicy.WORK_QUEUE))
        command = [sys.executable, "-m", "benchmarks.soak", "--serve", server.url,
                   "--samples", str(samples_path), "--every", str(args.every),
                   "--concurrency", str(args.concurrency), "--batch", str(args.batch),
                   "--work", str(args.work)]
        child = subprocess.Popen(command, cwd=_ROOT, stdin=subprocess.DEVNULL)
        began = time.monotonic()
        try:
            while not _last_sample(samples_path).get("ready"):
                if child.poll() is not None or time.monotonic() - began > 30:
                    msg = f"the serving child did not get ready (exit code {child.poll()})"
                    raise RuntimeError(msg)
                await asyncio.sleep(0.05)
            published = 0
            chunk = args.chunk
            while published < args.messages:
                handled = int(_last_sample(samples_path).get("handled", 0))
                if published - handled > args.backlog:
                    await asyncio.sleep(0.02)
                    continue
                count = min(chunk, args.messages - published)
                await publish_many(js, [_tick(published + i) for i in range(count)], timeout=30)
                published += count
            deadline = time.monotonic() + args.timeout
            while True:
                info = await js.consumer_info(STREAM, DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                if time.monotonic() > deadline or child.poll() is not None:
                    msg = (f"not drained: num_pending={info.num_pending} "
                           f"num_ack_pending={info.num_ack_pending}")
                    raise RuntimeError(msg)
                await asyncio.sleep(0.1)
            # ServiceStats is refreshed once per watchdog tick (1 s): sample after the next one
            await asyncio.sleep(max(2 * args.every, 1.5))
            elapsed = time.monotonic() - began
        finally:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
            await nc.close()
    samples = [json.loads(line) for line in samples_path.read_text().splitlines() if line]
    result = summarize(samples, messages=args.messages, concurrency=args.concurrency,
                       batch=args.batch, rss_growth=args.rss_growth)
    result["seconds"] = round(elapsed, 2)
    result["rate_per_second"] = round(args.messages / elapsed)
    result["drained"] = {"num_pending": info.num_pending, "num_ack_pending": info.num_ack_pending}
    return result


def summarize(samples: list[dict[str, Any]], *, messages: int, concurrency: int, batch: int,
              rss_growth: float) -> dict[str, Any]:
    """The verdict of a soak run from its samples (see the module docstring for the checks)."""
    samples = [s for s in samples if s.get("ready")]
    third = next((s for s in samples if s["handled"] >= messages / 3), samples[-1])
    end = samples[-1]
    growth = (end["rss"] - third["rss"]) / third["rss"]
    max_in_flight = max(s["in_flight"] for s in samples)
    max_buffered = max(s["buffered"] for s in samples)
    limit = max(batch, 2 * concurrency)  # the pull engine's bound (Service.serve)
    problems = []
    if end["handled"] < messages:
        problems.append(f"handled {end['handled']} of {messages}")
    if growth > rss_growth:
        problems.append(f"RSS grew {growth:.1%} after warm-up (allowed {rss_growth:.0%})")
    if max_in_flight > concurrency:
        problems.append(f"in flight reached {max_in_flight} > concurrency {concurrency}")
    if max_buffered > limit:
        problems.append(f"buffered reached {max_buffered} > pull bound {limit}")
    step = max(1, len(samples) // 20)
    curve = samples[::step]
    if curve[-1] is not end:
        curve.append(end)
    return {
        "messages": messages, "handled": end["handled"], "samples": len(samples),
        "rss_at_third_mib": round(third["rss"] / 2**20, 2),
        "rss_end_mib": round(end["rss"] / 2**20, 2),
        "rss_max_mib": round(max(s["rss"] for s in samples) / 2**20, 2),
        "rss_growth_after_warmup": round(growth, 4),
        "max_in_flight": max_in_flight, "max_buffered": max_buffered,
        "concurrency": concurrency, "batch": batch,
        "ok": not problems, "problems": problems,
        "curve": [{k: s[k] for k in ("t", "handled", "rss", "in_flight", "buffered")}
                  for s in curve],
        "all_samples": samples,
    }


def _print(result: dict[str, Any]) -> None:
    print(f"{'t (s)':>8} {'handled':>9} {'RSS MiB':>8} {'in flight':>9} {'buffered':>8}")
    for s in result["curve"]:
        print(f"{s['t']:8.1f} {s['handled']:9d} {s['rss'] / 2**20:8.1f} {s['in_flight']:9d} "
              f"{s['buffered']:8d}")
    print(f"{result['handled']} handled in {result['seconds']} s ({result['rate_per_second']}/s);"
          f" RSS {result['rss_at_third_mib']} MiB at 1/3 -> {result['rss_end_mib']} MiB at the "
          f"end ({result['rss_growth_after_warmup']:+.1%}); max in flight "
          f"{result['max_in_flight']}/{result['concurrency']}, max buffered "
          f"{result['max_buffered']}")
    print("OK" if result["ok"] else "FAILED: " + "; ".join(result["problems"]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=500_000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--work", type=float, default=0.001,
                        help="seconds each handler awaits (keeps the consumer the bottleneck)")
    parser.add_argument("--every", type=float, default=1.0, help="seconds between samples")
    parser.add_argument("--backlog", type=int, default=20_000,
                        help="most messages published and not yet handled")
    parser.add_argument("--chunk", type=int, default=5_000,
                        help="messages published concurrently, then their acks awaited")
    parser.add_argument("--rss-growth", type=float, default=0.10)
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to drain after the last publish")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--csv", type=Path)
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the child: serve this URL
    parser.add_argument("--samples", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        return asyncio.run(_serve(args))
    with tempfile.TemporaryDirectory(prefix="amebus-soak-") as tmp:
        result = asyncio.run(_run(args, Path(tmp) / "samples.jsonl"))
    _print(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    if args.csv:
        with args.csv.open("w", newline="") as file:
            writer = csv.DictWriter(file, ["t", "handled", "received", "in_flight", "buffered",
                                           "rss"], extrasaction="ignore")
            writer.writeheader()
            writer.writerows(result["all_samples"])
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
