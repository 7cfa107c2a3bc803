"""Every example runs as a script, exits 0 and prints what it promises."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    result = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True,
                            text=True, timeout=60, env=env, cwd=EXAMPLES.parent, check=False)
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr
    return result.stdout


def test_every_example_is_tested() -> None:
    tested = {"orders.py", "inventory_sqlite.py", "two_workers.py", "starlette_lifespan.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_orders() -> None:
    out = run_example("orders.py")
    lines = [" ".join(line.split()) for line in out.splitlines()]

    def has(*parts: str) -> None:
        assert any(all(p in line for p in parts) for line in lines), (parts, out)

    assert lines[1:5] == ["invoice invoice", "order.cancelled order.cancelled",
                          "order.paid order.paid", "order.paid.* order_paid"]
    has("order.paid.1001 order_paid booked 49.90 EUR for ada@example.com -> ack")
    # transient failure, retried after the backoff, then acked
    has("invoice invoice business failure, delivery 1: ConnectionError", "nak, retry in 0.2s")
    has("invoice invoice rendered INV-1 -> ack")
    # rejected for good by the handler
    has("order.paid.1003 order_paid amount -500 -> Term")
    # fails on every delivery: dead-lettered on the last (max_deliver = 3)
    has("order.paid.1004", "delivery 2: TimeoutError", "nak, retry in 0.2s")
    has("order.paid.1004", "delivery 3: TimeoutError", "-> term, dead-lettered")
    # the nested route publishes an upgraded event, which the flat route then handles
    has("order.paid order.paid upgraded -> publish order.paid.1005, ack")
    has("order.paid.1005 order_paid booked 19.99 EUR")
    has("order.cancelled order.cancelled gateway busy -> Nak(0.3)")
    has("order.cancelled order.cancelled refunded 1002 (customer) -> ack")
    # another producer's schema: does not decode, termed at once and dead-lettered
    has("order.paid.1006", "pre-process failure, delivery 1: DecodeError",
        "$.order_id", "-> term, dead-lettered")
    has("order_paid handled 8, acked 3, naked 2, termed 3, dead-lettered 2")
    has("invoice handled 2, acked 1, naked 1, termed 0, dead-lettered 0")
    has("order.paid.1006 (stage pre-process, deliveries 1): {\"order_id\": 1006}")
    has("order.paid.1004 (stage business, deliveries 3):")
    has("Amebus-Error: TimeoutError: fraud check did not answer")


def test_inventory_sqlite() -> None:
    out = run_example("inventory_sqlite.py")
    assert "order A-2: 5 x gadget refused, 3 on hand" in out
    assert "order A-4: 1 x widget refused, 0 on hand" in out
    assert out.splitlines()[-3:] == ["acked 4, termed 2", "stock gadget: 3", "stock widget: 0"]
    assert not (EXAMPLES.parent / "inventory.db").exists()


def test_two_workers() -> None:
    lines = run_example("two_workers.py").splitlines()
    assert lines[-1] == "40 of 40 jobs ran, 0 twice"
    for line in lines[:2]:
        words = line.split()
        assert words[:4] in (["worker", "1", "(exit", "0)"], ["worker", "2", "(exit", "0)"])
        assert int(words[5]) > 0, "each worker got a share"


@pytest.mark.parametrize("name", ["orders.py", "inventory_sqlite.py", "two_workers.py"])
def test_examples_have_a_docstring_saying_how_to_run(name: str) -> None:
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"python examples/{name}" in text


def test_starlette_lifespan() -> None:
    out = run_example("starlette_lifespan.py")
    assert out.count("-> 202") == 3, out
    assert "GET /stats -> {'acked': 3, 'orders': ['1001', '1002', '1003'], 'total_cents': 7239}" \
        in out
    assert out.rstrip().endswith("serving stopped"), out
