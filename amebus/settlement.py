"""The settlement table as a pure function, and its wire encoding (no I/O, no nats imports).

:func:`decide` maps what happened to a message (its :data:`Outcome`), how many times its
handler has been started (``attempt``), how many times the server has delivered it
(``deliveries``) and the :class:`Limits` to a :class:`~amebus.tracing.Decision`;
:func:`encode` turns a decision into the bytes sent on the message's reply subject and
:func:`parse` reads them back; :func:`reply_meta` reads what the reply subject says. Each row
of ``docs/settlement.md`` is one branch here and one row of ``tests/test_settlement.py``.

Two counts, two limits: ``max_attempts`` (the service's ``max_deliver``) bounds how often the
handler runs and is enforced by amebus; ``server_max_deliver`` is the server's own limit, a
backstop well above it for deliveries that never reached a handler (returned unstarted at
shutdown, lost with a crashed process). A delivery on the server's last try is never nak'ed:
the server would give up on it silently. :class:`Settings` are the service's knobs these
limits come from; :class:`RouteStats` the counters settling keeps per route.
"""

from __future__ import annotations

import json
from typing import Literal

import attrs

from amebus import _checks
from amebus.tracing import Decision

__all__ = [
    "PROGRESS",
    "Limits",
    "Outcome",
    "RouteStats",
    "Settings",
    "decide",
    "deliveries_of",
    "encode",
    "parse",
    "reply_meta",
    "server_max_deliver",
]

Outcome = Literal["handled", "skipped", "nak", "term", "invalid", "failed", "exhausted",
                  "unstarted", "copy-failed"]
"""What happened to one delivery:

- ``handled``: the handler returned (its result events, if any, are stored).
- ``skipped``: an unfiltered consumer got a subject no route handles.
- ``nak``: the handler raised ``Nak(delay)``.
- ``term``: the handler raised ``Term(reason)``.
- ``invalid``: it cannot succeed on any delivery (does not decode, no route).
- ``failed``: the handler raised, timed out, or its result events could not be stored.
- ``exhausted``: a redelivery whose handler already ran ``max_attempts`` times (it failed, or
  the process crashed while it ran): not run again.
- ``unstarted``: amebus gives it back without a finished run (serving stops before it
  started, or its handler was cancelled by the shutdown).
- ``copy-failed``: it was to be termed with a dead-letter copy and the copy was not stored.
"""


@attrs.frozen
class Limits:
    """The limits a decision is taken against (``<= 0``: unlimited)."""

    max_attempts: int = 5
    server_max_deliver: int = 50
    backoff: tuple[float, ...] = (1.0, 5.0, 30.0, 120.0)

    def retry_delay(self, attempt: int) -> float:
        """The nak delay after handler attempt number ``attempt`` failed."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(attempt, 1), len(self.backoff)) - 1]

    def last_attempt(self, attempt: int) -> bool:
        """True when attempt number ``attempt`` may not be followed by another."""
        return 0 < self.max_attempts <= attempt

    def last_delivery(self, deliveries: int) -> bool:
        """True on the server's last delivery: a nak would never be redelivered."""
        return 0 < self.server_max_deliver <= deliveries


@attrs.frozen(kw_only=True)
class Settings:
    """How messages are run and settled (the ``Service`` class attributes of the same names)."""

    concurrency: int = attrs.field(default=1, validator=_checks.integer(minimum=1))
    ack_wait: float = attrs.field(default=30.0, validator=_checks.seconds(
        strict=True, maximum=_checks.ACK_WAIT_MAX))
    max_deliver: int = attrs.field(default=5, validator=_checks.integer(
        minimum=-1, extra=" (0 or -1: unlimited)"))
    backoff: tuple[float, ...] = attrs.field(default=(1.0, 5.0, 30.0, 120.0),
                                             converter=_checks.delays)
    timeout: float | None = attrs.field(default=300.0, validator=_checks.optional_seconds)
    dead_letter_subject: str | None = attrs.field(default=None, validator=_checks.subject)
    shutdown_timeout: float = attrs.field(default=10.0, validator=_checks.seconds())
    server_max_deliver: int | None = attrs.field(default=None)
    """The server's max_deliver, a crash backstop above ``max_deliver`` (None: the default of
    :func:`server_max_deliver`)."""

    @server_max_deliver.validator
    def _check_server_max_deliver(self, _: attrs.Attribute[int | None], value: int | None
                                  ) -> None:
        if value is not None and value > 0 and 0 < self.max_deliver >= value:
            msg = (f"server_max_deliver {value!r} must be above max_deliver "
                   f"{self.max_deliver!r} (or None for {max(10 * self.max_deliver, 50)}, or "
                   f"-1 for unlimited): the server's limit is the backstop above amebus's")
            raise ValueError(msg)

    def limits(self) -> Limits:
        """The settlement limits these settings ask for."""
        return Limits(self.max_deliver,
                      server_max_deliver(self.max_deliver, self.server_max_deliver),
                      self.backoff)

    def retry_delay(self, deliveries: int) -> float:
        """The nak delay after delivery number ``deliveries`` failed."""
        return self.limits().retry_delay(deliveries)


@attrs.define
class RouteStats:
    """Counters of one route (``handler_seconds`` sums the time its handler ran)."""

    handled: int = 0
    acked: int = 0
    naked: int = 0
    termed: int = 0
    dead_lettered: int = 0
    handler_seconds: float = 0.0

    def count(self, decision: Decision) -> None:
        """Count one settlement sent for this route."""
        if decision.action == "ack":
            self.acked += 1
        elif decision.action == "nak":
            self.naked += 1
        else:
            self.termed += 1


def server_max_deliver(max_deliver: int, configured: int | None = None) -> int:
    """The server's ``max_deliver`` for a service limit of ``max_deliver`` attempts.

    ``configured`` wins when set; else ``max(10 * max_deliver, 50)``; -1 (unlimited) when
    ``max_deliver <= 0``.
    """
    if configured is not None:
        return configured if configured > 0 else -1
    return max(10 * max_deliver, 50) if max_deliver > 0 else -1


def deliveries_of(reply: str) -> int:
    """The server's delivery count in a JetStream reply subject (1 when it has none)."""
    tokens = reply.split(".") if reply else ()
    index = 4 if len(tokens) == 9 else 6 if len(tokens) >= 11 else -1
    token = tokens[index] if index >= 0 else ""
    return int(token) if token.isdigit() else 1


def reply_meta(reply: str) -> tuple[str, int, int]:
    """(stream, stream sequence, deliveries) from a JetStream reply subject."""
    tokens = reply.split(".") if reply else []
    try:
        if len(tokens) == 9:
            return tokens[2], int(tokens[5]), int(tokens[4])
        if len(tokens) >= 11:
            return tokens[4], int(tokens[7]), int(tokens[6])
    except ValueError:
        pass
    return "", 0, 1


def decide(outcome: Outcome, *, attempt: int, deliveries: int, limits: Limits,
           error: str = "", delay: float | None = None, dead_letter: bool = False) -> Decision:
    """The settlement of one delivery (the table of ``docs/settlement.md``).

    Args:
        outcome: what happened (:data:`Outcome`).
        attempt: the handler attempt this delivery was (1 the first time it ran); for
            ``exhausted``, how many attempts were spent.
        deliveries: the server's delivery count of this message (1 the first time).
        limits: the service's limits.
        error: the failure, one line (``ValueError: ...``), or the handler's term reason.
        delay: ``Nak(delay)``'s delay (None: the backoff for this attempt).
        dead_letter: whether a dead-letter subject is configured.
    """
    limit = limits.max_attempts
    last_delivery = limits.last_delivery(deliveries)
    if outcome == "handled" or outcome == "skipped":
        return Decision.ack()
    if outcome == "term":
        return Decision.term(error or "terminated by the handler")
    if outcome == "invalid":
        return Decision.term(error, dead_letter=dead_letter)
    if outcome == "exhausted":
        reason = f"failed or crashed {attempt} times (max_deliver {limit}); not run again"
        return Decision.term(reason, dead_letter=dead_letter)
    if outcome == "unstarted":
        if last_delivery:
            reason = (f"serving stopped before it was handled, on the server's last "
                      f"delivery ({deliveries} of {limits.server_max_deliver})")
            return Decision.term(reason, dead_letter=dead_letter)
        return Decision.nak(0.0)
    if outcome == "copy-failed":
        if last_delivery:
            return Decision.term(f"{error} (on the server's last delivery, {deliveries} of "
                                 f"{limits.server_max_deliver})")
        return Decision.nak(limits.retry_delay(attempt))
    # "nak" and "failed"
    if limits.last_attempt(attempt):
        return Decision.term(f"failed on attempt {attempt} of {limit}: {error}",
                             dead_letter=dead_letter)
    if last_delivery:
        return Decision.term(f"failed on the server's last delivery ({deliveries} of "
                             f"{limits.server_max_deliver}), attempt {attempt}: {error}",
                             dead_letter=dead_letter)
    if outcome == "nak" and delay is not None:
        return Decision.nak(delay)
    return Decision.nak(limits.retry_delay(attempt))


PROGRESS = b"+WPI"
"""The in-progress signal's payload: the server restarts the message's ack_wait."""


def encode(decision: Decision) -> bytes:
    """The reply-subject payload of ``decision``: ``+ACK``, ``-NAK {"delay": ns}``, ``+TERM
    reason`` (``reason`` must already be one safe line)."""
    if decision.action == "ack":
        return b"+ACK"
    if decision.action == "nak":
        if decision.delay > 0:
            return b"-NAK " + json.dumps({"delay": int(decision.delay * 1e9)}).encode()
        return b"-NAK"
    if decision.reason:
        return b"+TERM " + decision.reason.encode()
    return b"+TERM"


def parse(data: bytes) -> Decision:
    """The decision a reply-subject payload asks of the server (the inverse of :func:`encode`).

    Raises:
        ValueError: ``data`` is no settlement (``+WPI``, the in-progress signal, is none).
    """
    verb, _, rest = data.partition(b" ")
    if verb == b"+ACK":
        return Decision.ack()
    if verb == b"-NAK":
        delay = json.loads(rest)["delay"] / 1e9 if rest else 0.0
        return Decision.nak(delay)
    if verb == b"+TERM":
        return Decision.term(rest.decode())
    msg = f"unexpected settlement payload {data!r}: expected +ACK, -NAK or +TERM"
    raise ValueError(msg)
