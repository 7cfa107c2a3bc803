"""Every feature paid for: the consume workload with amebus plain ("off") and each feature on.

Run ``python -m benchmarks.features [--quick] [--rounds N] [--messages N] [--only a,b]
[--concurrency N] [--json PATH]`` from the repository root. The workload, the server and the
verification are those of ``benchmarks.consume``: a sealed stream of N orders over four
routes, one worker process per run, a run counted only if it handled exactly N messages
split as published, sent N acks and left its durable with nothing pending. Each round runs
``off`` and every variant once, the order rotating; the table gives each variant's median
msgs/s and CPU µs per message against ``off`` in the same run, and the median of the
per-round ratios (steadier on a shared machine, where the rate drifts between rounds).

A variant is one entry of `VARIANTS`: an observer (``telemetry``), keyword arguments for
each of the four ``Route``s, attributes set on the service class, and a ``reset`` run by the
parent before each run (an idempotent route's bucket is emptied, or every message of the
second round would be a duplicate).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats.js.errors
from nats.aio.client import Client

from amebus.idempotency import DEFAULT_BUCKET
from benchmarks._amebus_bench import amebus_serve
from benchmarks._baselines import Target, Unavailable, Workload
from benchmarks.consume import STREAM, _fill, _Server, _verify

__all__ = ["OFF", "VARIANTS", "Variant", "main"]

_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One feature turned on, everything else as in ``off``.

    Args:
        about: what is on, for the table's legend.
        telemetry: an observer of ``benchmarks._amebus_bench.observer_for`` (``"metrics"``,
            ``"tracing"``), or ``""`` for none.
        route: keyword arguments given to each of the four ``Route``s.
        service: attributes set on (a subclass of) the service class.
        reset: run by the parent, with its connection, before each run of this variant.
    """

    about: str
    telemetry: str = ""
    route: Mapping[str, Any] = field(default_factory=dict)
    service: Mapping[str, Any] = field(default_factory=dict)
    reset: Callable[[Client], Awaitable[None]] | None = None


async def _empty_idempotency_bucket(nc: Client) -> None:
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await nc.jetstream().delete_key_value(DEFAULT_BUCKET)


OFF = Variant("amebus, no feature on")
"""The row every variant is compared with."""

VARIANTS: dict[str, Variant] = {
    "metrics": Variant("Metrics() observer (Prometheus, its own registry)", telemetry="metrics"),
    "tracing": Variant("Tracing: OpenTelemetry SDK, BatchSpanProcessor, an exporter that drops "
                       "every span", telemetry="tracing"),
    "tracing_sampled": Variant("Tracing as above, ParentBased(TraceIdRatioBased(0.01)): 1% of "
                               "traces recorded", telemetry="tracing_sampled"),
    "idempotent": Variant("Route(idempotent=True): a KV get and put per message",
                          route={"idempotent": True}, reset=_empty_idempotency_bucket),
    "standby": Variant("standby = True: a pinned instance (priority groups, keep-alive pulls)",
                       service={"standby": True}),
    "key": Variant("Route(key='order_id'): order per key (at --concurrency 1, its bookkeeping)",
                   route={"key": "order_id"}),
}
"""The feature rows, by name. Batch routes are measured by ``benchmarks.batches`` (their
handler takes a list, so the same four handlers cannot be reused)."""


def _variant(name: str) -> Variant:
    return OFF if name == "off" else VARIANTS[name]


# -- worker: one variant, one process -------------------------------------------------------


def _worker(args: argparse.Namespace) -> int:
    variant = _variant(args.worker)
    work = Workload(args.messages)
    target = Target(args.url, STREAM, args.durable, lambda: print("ready", flush=True))
    report: dict[str, Any] = {"status": "ok"}
    try:
        asyncio.run(asyncio.wait_for(amebus_serve(
            work, target, concurrency=args.concurrency, telemetry=variant.telemetry,
            route_options=variant.route, attributes=variant.service), args.timeout))
    except Unavailable as error:
        print(json.dumps({"status": "unavailable", "reason": str(error)}), flush=True)
        return 0
    except TimeoutError:
        report["status"] = f"timed out after {args.timeout:g} s"
    except Exception as error:
        report["status"] = f"failed: {error!r}"
    report |= work.report()
    report["rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report), flush=True)
    return 0


# -- parent: rounds, verification, table ------------------------------------------------------


async def _run_worker(name: str, durable: str, args: argparse.Namespace, url: str
                      ) -> dict[str, Any]:
    command = [sys.executable, "-m", "benchmarks.features", "--worker", name, "--url", url,
               "--durable", durable, "--messages", str(args.messages),
               "--timeout", str(args.timeout), "--concurrency", str(args.concurrency)]
    path = os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")]))
    process = await asyncio.create_subprocess_exec(
        *command, cwd=_ROOT, env=os.environ | {"PYTHONPATH": path},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), args.timeout + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        return {"status": "worker hung and was killed"}
    reports = [line for line in stdout.splitlines() if line.startswith(b"{")]
    if process.returncode != 0 or not reports:
        tail = stderr.decode(errors="replace").strip().splitlines()[-5:]
        return {"status": f"worker exited {process.returncode}: {' | '.join(tail)}"}
    report: dict[str, Any] = json.loads(reports[-1])
    return report


async def _bench(args: argparse.Namespace, names: list[str]) -> list[dict[str, Any]]:
    server = _Server()
    try:
        nc = await server.connect()
        await _fill(nc, args.messages)
        runs: list[dict[str, Any]] = []
        skipped: set[str] = set()
        for round_ in range(args.rounds):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                if name in skipped:
                    continue
                reset = _variant(name).reset
                if reset is not None:
                    await reset(nc)
                durable = f"features_{name}_{round_ + 1}"
                run = await _run_worker(name, durable, args, server.url)
                run |= {"variant": name, "round": round_ + 1}
                if run["status"] == "unavailable":
                    skipped.add(name)
                    print(f"  {name}: skipped, {run['reason']}", file=sys.stderr)
                    runs.append(run)
                    continue
                problems = [] if run["status"] == "ok" else [run["status"]]
                if "count" in run:  # amebus acks: verified like consume's acking rows
                    problems += await _verify(nc, "amebus", durable, run, args.messages)
                run |= {"valid": not problems, "problems": problems}
                if run["valid"]:
                    run["rate"] = run["count"] / run["elapsed"]
                    run["cpu_us_per_msg"] = run["cpu"] / run["count"] * 1e6
                    shown = f"{run['rate']:>10,.0f} msgs/s {run['cpu_us_per_msg']:6.1f} µs/msg"
                else:
                    shown = "INVALID: " + "; ".join(problems)
                print(f"  round {round_ + 1} {name:<16} {shown}", file=sys.stderr)
                runs.append(run)
        await nc.close()
        return runs
    finally:
        server.stop()


def _medians(runs: list[dict[str, Any]], name: str) -> tuple[float, float, int, int] | None:
    mine = [r for r in runs if r["variant"] == name and r["status"] != "unavailable"]
    valid = [r for r in mine if r.get("valid")]
    if not valid:
        return None
    return (statistics.median(r["rate"] for r in valid),
            statistics.median(r["cpu_us_per_msg"] for r in valid), len(valid), len(mine))


def _paired(runs: list[dict[str, Any]], name: str) -> str:
    """The median over rounds of the variant's rate / off's rate in the same round."""
    rates = {(r["variant"], r["round"]): r["rate"] for r in runs if r.get("valid")}
    ratios = [rate / rates["off", round_] for (variant, round_), rate in rates.items()
              if variant == name and ("off", round_) in rates]
    return f"{statistics.median(ratios):.2f}x" if ratios else "-"


def table(runs: list[dict[str, Any]], names: list[str]) -> str:
    """The result table: per variant, median msgs/s and CPU µs/msg, and each against off."""
    off = _medians(runs, "off")
    header = (f"{'variant':<16} {'valid':>5} {'median/s':>9} {'CPU µs/msg':>10} "
              f"{'on/off msgs/s':>13} {'paired':>7} {'on/off CPU':>10}")
    rows = [header, "-" * len(header)]
    for name in names:
        unavailable = [r for r in runs if r["variant"] == name and r["status"] == "unavailable"]
        if unavailable:
            rows.append(f"{name:<16} skipped: {unavailable[0]['reason']}")
            continue
        found = _medians(runs, name)
        if found is None:
            rows.append(f"{name:<16} no valid run")
            continue
        rate, cpu, valid, ran = found
        ratio = f"{rate / off[0]:.2f}x" if off and name != "off" else "-"
        cpu_ratio = f"{cpu / off[1]:.2f}x" if off and name != "off" else "-"
        paired = _paired(runs, name) if name != "off" else "-"
        rows.append(f"{name:<16} {valid:>2}/{ran:<2} {rate:>9,.0f} {cpu:>10.1f} {ratio:>13} "
                    f"{paired:>7} {cpu_ratio:>10}")
    rows.append("")
    rows.append("on/off: the ratio of the medians; paired: the median over rounds of the "
                "ratio to off in the same round")
    rows += [f"{name}: {_variant(name).about}" for name in names]
    return "\n".join(rows)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    choices = ["off", *VARIANTS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks.features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2,000 messages, 1 round")
    parser.add_argument("--rounds", type=int, help="rounds over all variants (default 3)")
    parser.add_argument("--messages", type=int, help="orders in the stream (default 10,000)")
    parser.add_argument("--only", help=f"comma-separated variants besides off: "
                                       f"{', '.join(VARIANTS)}")
    parser.add_argument("--concurrency", type=int, default=1,
                        help="handlers at once, the same for every row (default 1)")
    parser.add_argument("--json", metavar="PATH", help="also write every run as JSON here")
    parser.add_argument("--timeout", type=float, help="seconds a worker may take")
    parser.add_argument("--worker", choices=choices, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--durable", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.messages = args.messages or (2_000 if args.quick else 10_000)
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.timeout = args.timeout or 30 + args.messages / 500
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--worker``, one run of it)."""
    args = _parse(argv)
    if args.worker:
        return _worker(args)
    names = ["off", *(args.only.split(",") if args.only else VARIANTS)]
    unknown = sorted(set(names) - {"off", *VARIANTS})
    if unknown:
        print(f"unknown variant {unknown!r}; choose from {', '.join(VARIANTS)}",
              file=sys.stderr)
        return 2
    runs = asyncio.run(_bench(args, names))
    print(f"\n{args.messages:,} messages, {args.rounds} round(s), concurrency "
          f"{args.concurrency}, {os.cpu_count()} CPUs\n")
    print(table(runs, names))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"messages": args.messages, "rounds": args.rounds, "runs": runs}, indent=2))
    invalid = [r for r in runs if r["status"] != "unavailable" and not r["valid"]]
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
