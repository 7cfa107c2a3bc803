"""The settlement table (``amebus.settlement.decide``) and its wire encoding, one row per line
of docs/settlement.md; no server needed. The real-server behaviour of each row is in
tests/test_consumer.py."""

from __future__ import annotations

import pytest

from amebus import Decision
from amebus.settlement import Limits, decide, encode, server_max_deliver

LIMITS = Limits(max_attempts=5, server_max_deliver=50, backoff=(1.0, 5.0, 30.0))
E = "ValueError: bad"

ROWS = [
    # (row of docs/settlement.md, outcome, attempt, deliveries, extra, decision)
    ("handler returns", "handled", 1, 1, {}, Decision.ack()),
    ("handler returns on a redelivery", "handled", 3, 7, {}, Decision.ack()),
    ("unrouted on an unfiltered consumer", "skipped", 1, 1, {}, Decision.ack()),
    ("Nak(delay), attempts left", "nak", 1, 1, {"delay": 2.5}, Decision.nak(2.5)),
    ("Nak(), attempts left: the backoff", "nak", 2, 2, {}, Decision.nak(5.0)),
    ("Nak(0) redelivers at once", "nak", 1, 1, {"delay": 0.0}, Decision.nak(0.0)),
    ("Nak on the last attempt", "nak", 5, 5, {"error": "Nak: later"},
     Decision.term("failed on attempt 5 of 5: Nak: later")),
    ("Term(reason)", "term", 1, 1, {"error": "duplicate"}, Decision.term("duplicate")),
    ("Term() without a reason", "term", 1, 1, {}, Decision.term("terminated by the handler")),
    ("does not decode / no route", "invalid", 1, 1,
     {"error": "pre-process: DecodeError: x", "dead_letter": True},
     Decision.term("pre-process: DecodeError: x", dead_letter=True)),
    ("exception, attempts left: backoff[attempt - 1]", "failed", 1, 1, {"error": E},
     Decision.nak(1.0)),
    ("exception, the last backoff value repeats", "failed", 4, 9, {"error": E},
     Decision.nak(30.0)),
    ("exception on the last attempt: term, dead-lettered", "failed", 5, 5,
     {"error": E, "dead_letter": True},
     Decision.term(f"failed on attempt 5 of 5: {E}", dead_letter=True)),
    ("exception on the server's last delivery", "failed", 2, 50, {"error": E},
     Decision.term(f"failed on the server's last delivery (50 of 50), attempt 2: {E}")),
    ("redelivery after max_deliver failed or crashed attempts", "exhausted", 5, 9,
     {"dead_letter": True},
     Decision.term("failed or crashed 5 times (max_deliver 5); not run again",
                   dead_letter=True)),
    ("given back unstarted (shutdown)", "unstarted", 0, 3, {}, Decision.nak(0.0)),
    ("given back on the server's last delivery", "unstarted", 0, 50, {"dead_letter": True},
     Decision.term("serving stopped before it was handled, on the server's last delivery "
                   "(50 of 50)", dead_letter=True)),
    ("dead-letter copy failed, deliveries left", "copy-failed", 5, 5, {"error": "r"},
     Decision.nak(30.0)),
    ("dead-letter copy failed on the server's last delivery", "copy-failed", 5, 50,
     {"error": "r"}, Decision.term("r (on the server's last delivery, 50 of 50)")),
]


@pytest.mark.parametrize(("row", "outcome", "attempt", "deliveries", "extra", "expected"),
                         ROWS, ids=[r[0] for r in ROWS])
def test_table(row: str, outcome: str, attempt: int, deliveries: int, extra: dict[str, object],
               expected: Decision) -> None:
    assert decide(outcome, attempt=attempt, deliveries=deliveries,  # type: ignore[arg-type]
                  limits=LIMITS, **extra) == expected  # type: ignore[arg-type]


def test_unlimited() -> None:
    limits = Limits(max_attempts=0, server_max_deliver=-1, backoff=())
    assert decide("failed", attempt=1000, deliveries=1000, limits=limits) == Decision.nak(0.0)
    assert decide("unstarted", attempt=0, deliveries=10**6, limits=limits) == Decision.nak()


@pytest.mark.parametrize(("max_deliver", "configured", "expected"), [
    (5, None, 50), (1, None, 50), (7, None, 70), (5, 6, 6), (5, -1, -1), (0, None, -1),
    (-1, None, -1), (0, 100, 100)])
def test_server_max_deliver(max_deliver: int, configured: int | None, expected: int) -> None:
    assert server_max_deliver(max_deliver, configured) == expected


@pytest.mark.parametrize(("decision", "wire"), [
    (Decision.ack(), b"+ACK"),
    (Decision.nak(), b"-NAK"),
    (Decision.nak(1.5), b'-NAK {"delay": 1500000000}'),
    (Decision.term(), b"+TERM"),
    (Decision.term("bad payload"), b"+TERM bad payload"),
])
def test_encode(decision: Decision, wire: bytes) -> None:
    assert encode(decision) == wire


def test_server_max_deliver_at_or_below_max_deliver_is_refused_at_class_creation() -> None:
    from amebus import Route, Service
    from amebus.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"server_max_deliver 5 must be above "
                                                 r"max_deliver 5 \(or None for 50"):
        class Orders(Service):
            stream = "ORDERS"
            max_deliver = 5
            server_max_deliver = 5
            everything = Route("order.>", lambda msg: None)


def test_new_routes_is_checked_at_class_creation() -> None:
    from amebus import Route, Service
    from amebus.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=r"new_routes is 'ignore'; use 'replay' or "
                                                 r"'skip'"):
        class Orders(Service):
            stream = "ORDERS"
            new_routes = "ignore"
            everything = Route("order.>", lambda msg: None)


def test_limits_edges() -> None:
    assert LIMITS.last_delivery(50) and not LIMITS.last_delivery(49)
    assert LIMITS.last_attempt(5) and not LIMITS.last_attempt(4)
