"""Error tracing: every failure is reported, with its message context and the decision taken.

An ``ErrorTracer`` receives a :class:`Failure` and may return a :class:`Decision` to override
how the message is settled. The default, :class:`LoggingTracer`, logs through ``logging``.
"""

from __future__ import annotations

import logging
from typing import Literal, Protocol

import attrs

from amebus._text import safe_text
from amebus.errors import Nak, check_delay

__all__ = ["Decision", "ErrorTracer", "Failure", "LoggingTracer", "Stage"]

Stage = Literal["pre-process", "business", "post-process", "gave-up"]
"""Where a failure happened: before the handler ran (the payload does not decode, no route),
in the handler, or after it (publishing its result events, or the dead-letter copy); or
``gave-up``: the server stopped delivering it (its max_deliver was reached)."""

Action = Literal["ack", "nak", "term"]


@attrs.frozen
class Decision:
    """How a message is settled: ``ack``, ``nak`` after ``delay`` seconds, or ``term``."""

    action: Action
    delay: float = attrs.field(default=0.0, converter=check_delay)
    """Seconds before a nak's redelivery: a finite number from 0 to ``amebus.errors.MAX_DELAY``
    (else TypeError or ValueError)."""
    reason: str = ""
    dead_letter: bool = False
    """With ``term``: publish a copy to the service's ``dead_letter_subject`` first."""

    @classmethod
    def ack(cls) -> Decision:
        """Acknowledge: the message is done."""
        return cls("ack")

    @classmethod
    def nak(cls, delay: float = 0.0) -> Decision:
        """Redeliver after ``delay`` seconds (0: at once)."""
        return cls("nak", delay=delay)

    @classmethod
    def term(cls, reason: str = "", *, dead_letter: bool = False) -> Decision:
        """Never redeliver; ``reason`` travels to the server in ``+TERM <reason>``."""
        return cls("term", reason=reason, dead_letter=dead_letter)


@attrs.frozen
class Failure:
    """A failure and its context, as handed to an ``ErrorTracer``.

    Attributes:
        stage: ``pre-process``, ``business`` or ``post-process``.
        error: the exception.
        subject: the message subject.
        stream: the stream name ('' when unknown).
        stream_seq: the stream sequence (0 when unknown).
        deliveries: how many times the server has delivered this message (1 the first time).
        route: the route's attribute path, or None when no route matched.
        retryable: True if a nak (redelivery) could help.
        decision: what amebus will do unless the tracer returns another decision.
    """

    stage: Stage
    error: BaseException
    subject: str
    stream: str
    stream_seq: int
    deliveries: int
    route: str | None
    retryable: bool
    decision: Decision


class ErrorTracer(Protocol):
    """Receives every failure. Return None to keep ``failure.decision``, or another Decision.

    ``trace`` runs on the event loop for each failure: keep it quick (hand slow reporting off to
    a task). If it raises, the error is logged and the original decision stands.
    """

    def trace(self, failure: Failure) -> Decision | None:
        """Report ``failure``; optionally return the decision to take instead."""


class LoggingTracer:
    """The default tracer: one log record per failure on the ``amebus`` logger.

    Retryable failures are logged at WARNING, final ones (term) at ERROR; the traceback is
    logged for handler and post-process failures only (a payload that does not decode, a
    subject without a route, or a handler's deliberate ``Nak`` on the last delivery is
    explained by its message alone). The subject and the error are logged as safe text
    (control characters and lone surrogates escaped, length bounded), so a hostile message
    cannot forge log lines or break the log handler.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("amebus")

    def trace(self, failure: Failure) -> Decision | None:
        """Log the failure and keep the decision."""
        d = failure.decision
        level = logging.ERROR if d.action == "term" else logging.WARNING
        if self.logger.isEnabledFor(level):
            self.logger.log(
                level,
                "%s failure on %s (route %s, stream seq %d, delivery %d): %s -> %s%s",
                failure.stage, safe_text(repr(failure.subject), 1000),
                safe_text(failure.route, 200), failure.stream_seq, failure.deliveries,
                safe_text(failure.error, 1000), d.action,
                f" {d.delay:g}s" if d.action == "nak" else "",
                exc_info=failure.error if d.action == "term" and failure.retryable
                and not isinstance(failure.error, Nak) else None,
            )
        return None
