"""Missing NATS rights as one sentence each: a Permissions Violation nats-py reports (through
the connection's error callback, wrapped in :mod:`amebus._natsio`) becomes an ERROR line naming
the grant of :mod:`amebus.permissions`, what amebus needs it for and the line to add; at bind
it replaces the bare timeout of the refused request. Also the note on a shared ``_INBOX``.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, TypeVar

from amebus.errors import ConfigurationError
from amebus.grants import Direction, Permissions, inbox_prefix

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["explain_violation", "explained", "note_shared_inbox", "watch_violations"]

log = logging.getLogger("amebus.permissions")
T = TypeVar("T")

_VIOLATION = re.compile(r"permissions violation for (publish|subscription) to \"?([^\"\s]+)",
                        re.IGNORECASE)


def _covers(pattern: str, subject: str) -> bool:
    want, have = pattern.lower().split("."), subject.lower().split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def explain_violation(message: str, found: Permissions, target: str | None = None
                      ) -> str | None:
    """One sentence for a nats-py/nats-server Permissions Violation ``message`` on a subject
    amebus needs (naming the grant, why, and the line to add); None for another error."""
    match = _VIOLATION.search(message)
    if match is None:
        return None
    direction: Direction = "publish" if match[1].lower() == "publish" else "subscribe"
    subject = match[2]
    grant = next((g for g in found.grants if g.direction == direction
                  and _covers(g.subject, subject)), None)
    command = f"`amebus permissions {target or found.target or 'module:' + found.service}`"
    if grant is None:
        return (f"{found.service} may not {direction} to {subject!r} (as nats-py reports it, "
                f"in lower case), a subject amebus's permissions do not list (your own "
                f"code's?); add it to {direction}.allow, or check {command}")
    return (f"{found.service} may not {direction} to {grant.subject!r}: needed {grant.why}; "
            f"add it to {direction}.allow, or run {command}")


def watch_violations(nc: Client, found: Permissions) -> list[str]:
    """Log (ERROR, once per grant) the sentence of every Permissions Violation ``nc`` gets;
    returns the list the sentences are appended to, in order."""
    from amebus import _natsio

    seen: list[str] = []

    def listener(error: BaseException) -> None:
        sentence = explain_violation(str(error), found)
        if sentence is not None and sentence not in seen:
            seen.append(sentence)
            log.error("%s", sentence)

    _natsio.on_error(nc, listener)
    return seen


async def explained(violations: list[str], step: Awaitable[T]) -> T:
    """Await ``step`` (binding); if it fails after a Permissions Violation, raise
    ConfigurationError with the violation's sentence instead of a bare timeout."""
    before = len(violations)
    try:
        return await step
    except ConfigurationError:
        raise
    except Exception as exc:
        if len(violations) > before:
            msg = violations[-1]
            raise ConfigurationError(msg) from exc
        raise


def note_shared_inbox(nc: Client, service: type[Any]) -> None:
    """Log once per connection that ``nc`` replies on the shared ``_INBOX`` (every user allowed
    ``_INBOX.>`` can read its replies): a WARNING on a server that asks for credentials, INFO
    on one that does not. Cheap: ``new_inbox()`` is public."""
    from amebus import _natsio

    if getattr(nc, "_amebus_inbox_noted", False) or not nc.new_inbox().startswith("_INBOX."):
        return
    with contextlib.suppress(AttributeError):
        nc._amebus_inbox_noted = True  # type: ignore[attr-defined]
    level = logging.WARNING if _natsio.auth_required(nc) else logging.INFO
    log.log(level, "%s: the connection replies on the shared _INBOX prefix; connect with "
            "inbox_prefix=%r to receive replies on a private inbox (docs/security.md)",
            service.__name__, inbox_prefix(service))
