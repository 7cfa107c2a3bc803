"""The dead-letter copy of a failed message: its headers, the size check, and the decision to
take when it cannot be stored; with the reply-subject and one-line helpers the consumer shares.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from amebus.tracing import Decision, ErrorTracer, Failure

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.consumer import Settings

__all__ = ["one_line", "publish_dead_letter", "reply_meta"]


async def publish_dead_letter(js: JetStreamContext, subject: str, msg: Msg, failure: Failure,
                              decision: Decision, *, settings: Settings, tracer: ErrorTracer,
                              max_payload: int | None,
                              on_copy_failed: Callable[[BaseException], Decision] | None = None
                              ) -> Decision | None:
    """Publish the dead-letter copy of ``msg``, which failed as ``failure`` says, to ``subject``.

    Returns None once the copy is stored, else the decision to send instead of ``decision``
    (a term without a copy, a nak onto the spare delivery); each such failure is traced.
    ``on_copy_failed(error)``, when given, chooses the decision after a failed publish.
    """
    headers = {k: v for k, v in (msg.headers or {}).items()
               if k not in ("Nats-Msg-Id", "Amebus-Event-Type")}
    original = msg.headers or {}
    if "Nats-Msg-Id" in original:
        headers["Amebus-Original-Msg-Id"] = original["Nats-Msg-Id"]
    if "Amebus-Event-Type" in original:
        headers["Amebus-Original-Event-Type"] = original["Amebus-Event-Type"]
    headers.update({
        "Amebus-Dead-Letter": "1",
        "Amebus-Original-Subject": msg.subject,
        "Amebus-Original-Stream": failure.stream,
        "Amebus-Original-Sequence": str(failure.stream_seq),
        "Amebus-Deliveries": str(failure.deliveries),
        "Amebus-Stage": failure.stage,
        "Amebus-Route": failure.route or "",
        "Amebus-Error": one_line(failure.error),
    })
    size = len(msg.data) + 12 + sum(len(k.encode()) + len(v.encode()) + 4
                                    for k, v in headers.items())
    if max_payload is not None and size > max_payload:  # the server would close the connection
        error = ValueError(
            f"the dead-letter copy would be {size} bytes with its headers, over the "
            f"server's max_payload of {max_payload}; termed without a copy (the original stays "
            f"in stream {failure.stream!r} at sequence {failure.stream_seq} unless the "
            f"stream's retention removes it)")
        plain = Decision.term(f"{decision.reason}; not dead-lettered: too large")
        with contextlib.suppress(Exception):
            tracer.trace(attrs.evolve(failure, stage="post-process", error=error,
                                      decision=plain))
        return plain
    try:
        await js.publish(subject, msg.data, headers=headers)
    except Exception as exc:
        # Keep the message: nak it onto the spare delivery the consumer holds for this
        # (its server max_deliver is one more than ours). Once that is spent, a nak would
        # leave it unsettled for good, so it is termed with the reason.
        spare = 0 < settings.max_deliver <= failure.deliveries - 1
        retry = (Decision.term(f"{decision.reason}; the dead-letter copy failed too: "
                               f"{one_line(exc)}") if spare else
                 Decision.nak(settings.retry_delay(failure.deliveries)))
        if on_copy_failed is not None:
            retry = on_copy_failed(exc)
        post = attrs.evolve(failure, stage="post-process", error=exc, decision=retry)
        with contextlib.suppress(Exception):
            tracer.trace(post)
        return retry
    return None


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


def one_line(value: object, limit: int = 300) -> str:
    """``value`` (an exception as ``Type: message``) on one line of at most ``limit`` chars."""
    text = str(value) if not isinstance(value, BaseException) else (
        f"{type(value).__name__}: {value}")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
