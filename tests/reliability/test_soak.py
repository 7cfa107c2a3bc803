"""Scenario 9, short: ``benchmarks/soak.py`` through one service, memory and queues bounded.

The full soak (500,000 messages) runs with ``AMEBUS_RELIABILITY=full``, or by hand:
``python -m benchmarks.soak --messages 500000 --json soak.json --csv soak.csv``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _scenario import Outcome, scaled

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


def test_soak_memory_and_queues_stay_bounded(tmp_path: Path) -> None:
    messages, concurrency, batch = scaled(30_000, 500_000), 8, 256
    result_path = tmp_path / "soak.json"
    command = [sys.executable, "-m", "benchmarks.soak", "--messages", str(messages),
               "--concurrency", str(concurrency), "--batch", str(batch),
               "--every", "0.25" if messages < 100_000 else "1.0",
               "--json", str(result_path), "--csv", str(tmp_path / "soak.csv")]
    began = time.monotonic()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=120 if messages < 100_000 else 900)
    print(done.stdout)
    assert result_path.exists(), done.stdout + done.stderr
    result = json.loads(result_path.read_text())
    Outcome("soak", messages, "none (steady load)", messages - result["handled"], 0, [], [],
            time.monotonic() - began,
            {k: result[k] for k in ("rss_at_third_mib", "rss_end_mib", "rss_max_mib",
                                    "rss_growth_after_warmup", "max_in_flight", "max_buffered",
                                    "rate_per_second", "curve")}).report()
    assert result["handled"] == messages
    assert result["drained"] == {"num_pending": 0, "num_ack_pending": 0}
    assert result["rss_growth_after_warmup"] <= 0.10, result["problems"]
    assert result["max_in_flight"] <= concurrency
    assert result["max_buffered"] <= max(batch, 2 * concurrency)
    assert done.returncode == 0 and result["ok"], result["problems"]
