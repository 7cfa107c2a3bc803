"""Resolve cost of a compiled service against a naive scan, from 10 to 10,000 routes.

Run ``python -m benchmarks.routing [--quick] [--sizes 10,100,...] [--check]`` from the
repository root. Per size it generates distinct routes (seeded: tokens from a vocabulary that
grows with the size, a ``*`` in one token of seven, a ``>`` tail in one route of ten), builds a
``Service`` subclass with them, and times, over the same subjects (two thirds filled in from
the routes, one third near misses and strangers):

- ``resolve``: ``Service.resolve(subject)``, the trie of ``amebus.matcher``;
- ``scan``: every compiled route in turn, ``amebus.subjects.matches``, keeping the most
  specific (``amebus.subjects.specificity``).

Both must pick the same route for every subject, or the benchmark exits 1. It prints a table of
microseconds per resolve (best of 5 runs; ``trie us``: only the subjects no literal route
equals, which skip the exact-match dict and walk the trie) and the targets: 10,000 routes within
2x of 10 routes, and ``resolve`` at least 50x faster than ``scan`` at 1,000 routes
(``--check``: exit 1 if missed).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from amebus import Route, Service
from amebus.routing import CompiledRoute
from amebus.subjects import matches, specificity

__all__ = ["main"]

SEED = 20_240_601
SUBJECTS = 4_000
SCAN_WORK = 400_000  # route checks per timed scan run: fewer subjects for bigger services


async def _handler(msg: Any) -> None:
    """Never called: the benchmark only resolves."""


def _routes(n: int, rng: random.Random) -> list[str]:
    width = max(3, round(n ** (1 / 3) * 1.5))
    found: set[str] = set()
    while len(found) < n:
        tokens = [f"t{rng.randrange(width)}" for _ in range(rng.choice((2, 3, 3, 4)))]
        for index in range(1, len(tokens)):
            if rng.random() < 1 / 7:
                tokens[index] = "*"
        if rng.random() < 0.1:
            tokens[-1] = ">"
        found.add(".".join(tokens))
    return sorted(found, key=lambda _: rng.random())


def _subjects(routes: list[str], count: int, rng: random.Random) -> list[str]:
    subjects = []
    for number in range(count):
        tokens: list[str] = []
        for token in rng.choice(routes).split("."):
            if token == "*":
                tokens.append(f"v{rng.randrange(1000)}")
            elif token == ">":
                tokens += [f"v{rng.randrange(1000)}" for _ in range(rng.randint(1, 2))]
            else:
                tokens.append(token)
        if number % 3 == 2:  # a near miss: one token changed, or a token added
            at = rng.randrange(len(tokens))
            if rng.random() < 0.5:
                tokens[at] = "miss"
            else:
                tokens.insert(at, "extra")
        subjects.append(".".join(tokens))
    return subjects


def _service(routes: list[str]) -> tuple[Any, float]:
    members = {f"r{index}": Route(pattern, _handler) for index, pattern in enumerate(routes)}
    start = time.perf_counter()
    cls = type("Bench", (Service,), members)
    return cls, time.perf_counter() - start


def _scan(routes: Sequence[CompiledRoute]) -> Callable[[str], CompiledRoute | None]:
    def resolve(subject: str) -> CompiledRoute | None:
        tokens = subject.split(".")
        best, best_key = None, None
        for route in routes:
            if matches(route.tokens, tokens):
                key = specificity(route.tokens)
                if best_key is None or key < best_key:
                    best, best_key = route, key
        return best

    return resolve


def _per_call(resolve: Callable[[str], object], subjects: list[str], repeat: int) -> float:
    """Microseconds per call: the best of ``repeat`` runs over ``subjects``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for subject in subjects:
            resolve(subject)
        best = min(best, time.perf_counter() - start)
    return best / len(subjects) * 1e6


def _measure(n: int, repeat: int) -> dict[str, float]:
    rng = random.Random(SEED + n)
    routes = _routes(n, rng)
    cls, compile_s = _service(routes)
    subjects = _subjects(routes, SUBJECTS, rng)
    scan = _scan(cls.routes)
    scanned = subjects[:max(50, min(SUBJECTS, SCAN_WORK // n))]
    for subject in scanned:
        if cls.resolve(subject) is not scan(subject):
            msg = (f"{n} routes: resolve({subject!r}) gives {cls.resolve(subject)!r}, "
                   f"the scan {scan(subject)!r}")
            raise SystemExit(msg)
    hits = sum(cls.resolve(subject) is not None for subject in subjects)
    literal = {r.pattern for r in cls.routes if "*" not in r.tokens and ">" not in r.tokens}
    walked = [subject for subject in subjects if subject not in literal]
    return {"routes": n, "compile_ms": compile_s * 1e3, "hit_rate": hits / len(subjects),
            "resolve_us": _per_call(cls.resolve, subjects, repeat),
            "walk_us": _per_call(cls.resolve, walked, repeat),
            "scan_us": _per_call(scan, scanned, repeat)}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.routing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 runs per measure, not 5")
    parser.add_argument("--sizes", default="10,100,1000,10000",
                        help="route counts, comma-separated (default 10,100,1000,10000)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    rows = [_measure(n, 2 if args.quick else 5) for n in sizes]
    base = rows[0]["resolve_us"]
    print(f"{'routes':>7} {'compile ms':>11} {'hits':>5} {'resolve us':>11} {'trie us':>8} "
          f"{'scan us':>10} {'scan/resolve':>13} {'vs ' + str(sizes[0]):>7}")
    for row in rows:
        print(f"{row['routes']:>7,} {row['compile_ms']:>11.1f} {row['hit_rate']:>5.0%} "
              f"{row['resolve_us']:>11.2f} {row['walk_us']:>8.2f} {row['scan_us']:>10.1f} "
              f"{row['scan_us'] / row['resolve_us']:>12.0f}x "
              f"{row['resolve_us'] / base:>6.2f}x")
    by_size = {row["routes"]: row for row in rows}
    missed = False
    if 10 in by_size and 10_000 in by_size:
        ratio = by_size[10_000]["resolve_us"] / by_size[10]["resolve_us"]
        missed |= ratio > 2
        print(f"target: 10,000 routes within 2x of 10 routes: {ratio:.2f}x "
              f"{'ok' if ratio <= 2 else 'MISSED'}")
    if 1_000 in by_size:
        speedup = by_size[1_000]["scan_us"] / by_size[1_000]["resolve_us"]
        missed |= speedup < 50
        print(f"target: >= 50x faster than the scan at 1,000 routes: {speedup:.0f}x "
              f"{'ok' if speedup >= 50 else 'MISSED'}")
    return 1 if missed and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
