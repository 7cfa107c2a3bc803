"""One log line per settlement: DEBUG for an ack, INFO for a nak, WARNING for a term (with its
reason), each with the route, subject, stream sequence and delivery."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from amebus._text import safe_text
from amebus.settlement import reply_meta

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.handlers import Handler
    from amebus.tracing import Decision

__all__ = ["log_settlement", "outcome_of"]


def outcome_of(decision: Decision, handler: Handler | None, *, returned: bool) -> str:
    """The outcome label of a settlement: ``acked``, ``skipped`` (an unrouted message acked
    unhandled), ``naked``, ``returned`` (given back at shutdown), ``termed``."""
    if decision.action == "ack":
        return "acked" if handler is not None else "skipped"
    if decision.action == "nak":
        return "returned" if returned and decision.delay == 0 else "naked"
    return "termed"


def log_settlement(logger: logging.Logger, msg: Msg, decision: Decision,
                   handler: Handler | None, *, returned: bool) -> None:
    """Log how ``msg`` is settled (``returned``: serving is stopping)."""
    outcome = outcome_of(decision, handler, returned=returned)
    level = {"acked": logging.DEBUG, "skipped": logging.DEBUG, "termed": logging.WARNING}.get(
        outcome, logging.INFO)
    if not logger.isEnabledFor(level):
        return
    _, seq, deliveries = reply_meta(msg.reply)
    if outcome == "naked":
        how = f"naked, redelivery in {decision.delay:g}s"
    elif outcome == "returned":
        how = "returned unfinished at shutdown, for redelivery at once"
    elif outcome == "termed":
        copy = " (dead-letter copy published)" if decision.dead_letter else ""
        how = f"termed{copy}: {decision.reason or 'no reason given'}"
    else:
        how = outcome
    route = handler.name if handler is not None else "(no route)"
    logger.log(level, "settled %s (route %s, stream seq %d, delivery %d): %s",
               safe_text(repr(msg.subject), 1000), route, seq, deliveries, safe_text(how, 1000))
