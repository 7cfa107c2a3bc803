"""The dead-letter copy of a failed message: its headers, the size check, and the decision to
take when it cannot be stored; with the reply-subject and one-line helpers the consumer shares.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
from nats.js.api import RetentionPolicy
from nats.js.errors import APIError, NotFoundError

from amebus._text import safe_text
from amebus.errors import ConfigurationError
from amebus.subjects import matches, validate_pattern
from amebus.tracing import Decision, ErrorTracer, Failure
from amebus.wire import header_size

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.js.client import JetStreamContext

    from amebus.settlement import Settings

__all__ = ["check_dead_letter_stream", "dead_letter_headers", "one_line", "publish_dead_letter"]


log = logging.getLogger(__name__)


async def check_dead_letter_stream(js: JetStreamContext, owner: str, subject: str | None, *,
                                   consumed: str, routes: Sequence[str],
                                   create: str | None) -> None:
    """At serve(): make sure a stream captures the dead-letter ``subject`` (creating the stream
    ``create`` with it when given and none does), and that the copies do not loop back into
    the service: a copy stored in the ``consumed`` stream on a subject one of ``routes``
    matches would be handled, fail, and be dead-lettered again.

    Raises ConfigurationError with the fix.
    """
    if subject is None:
        if create is not None:
            msg = (f"{owner} sets dead_letter_stream {create!r} but no dead_letter_subject; "
                   f"set dead_letter_subject = 'dead.orders' too, or drop dead_letter_stream")
            raise ConfigurationError(msg)
        return
    try:
        name: str | None = await js.find_stream_name_by_subject(subject)
    except NotFoundError:
        name = None
    except Exception as exc:  # no permission for $JS.API.STREAM.NAMES, ...: cannot check
        log.warning("%s: could not check which stream captures dead_letter_subject %r: %r",
                    owner, subject, exc)
        return
    if name is None and create is None:
        msg = (f"{owner}.dead_letter_subject is {subject!r}, but no stream captures it, so "
               f"every dead-letter copy would fail and messages would be retried instead of "
               f"dead-lettered; create one (nats stream add DEAD --subjects {subject!r}), or "
               f"set dead_letter_stream = 'DEAD' to let amebus create it")
        raise ConfigurationError(msg)
    if name is None and create is not None:
        await _create(js, owner, create, subject)
        name = create
    elif create is not None and name != create:
        msg = (f"{owner}.dead_letter_subject {subject!r} is captured by stream {name!r}, not "
               f"by dead_letter_stream {create!r}; drop dead_letter_stream, or move the "
               f"subject to {create!r}")
        raise ConfigurationError(msg)
    if name != consumed:
        return
    looping = [r for r in routes if matches(validate_pattern(r), subject.split("."))]
    if looping:
        msg = (f"{owner}.dead_letter_subject {subject!r} is stored in the consumed stream "
               f"{consumed!r} and matches the route pattern {looping[0]!r}: every copy would "
               f"be handled again, fail and be dead-lettered again; use a subject no route "
               f"matches, or a stream of its own (dead_letter_stream = 'DEAD')")
        raise ConfigurationError(msg)
    policy = (await js.stream_info(consumed)).config.retention
    retention = str(getattr(policy, "value", policy or RetentionPolicy.LIMITS.value))
    if retention != RetentionPolicy.LIMITS.value:
        msg = (f"{owner}.dead_letter_subject {subject!r} is stored in the consumed stream "
               f"{consumed!r}, whose retention is {retention!r}: the copies would be removed "
               f"once consumed; give the dead letters a stream of their own "
               f"(dead_letter_stream = 'DEAD')")
        raise ConfigurationError(msg)


async def _create(js: JetStreamContext, owner: str, stream: str, subject: str) -> None:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            await js.add_stream(name=stream, subjects=[subject])
        except APIError as exc:
            msg = (f"{owner}: could not create dead_letter_stream {stream!r} on {subject!r}: "
                   f"{exc.description} (err_code {exc.err_code})")
            raise ConfigurationError(msg) from exc
        log.warning("%s: created dead-letter stream %s on %s", owner, stream, subject)
        return
    config = info.config
    try:
        await js.update_stream(config.evolve(subjects=[*(config.subjects or []), subject]))
    except APIError as exc:
        msg = (f"{owner}: could not add dead_letter_subject {subject!r} to stream {stream!r}: "
               f"{exc.description} (err_code {exc.err_code})")
        raise ConfigurationError(msg) from exc
    log.warning("%s: added %s to dead-letter stream %s", owner, subject, stream)


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
    headers = dead_letter_headers(msg, failure)
    size = len(msg.data) + header_size(headers)
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


_RENAMED = {"nats-msg-id": "Amebus-Original-Msg-Id",
            "amebus-event-type": "Amebus-Original-Event-Type"}
# The header names nats-py 2.16 sends (its _HEADER_KEY_RE, an RFC 7230 token); other names it
# refuses with BadHeaderError, which would fail every copy of such a message.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def dead_letter_headers(msg: Msg, failure: Failure) -> dict[str, str]:
    """The headers of the dead-letter copy of ``msg`` (the table in docs/settlement.md).

    Every original header is kept, except that a ``Nats-`` header (it steers the server:
    ``Nats-Expected-Stream`` would make it refuse the copy, ``Nats-TTL`` expire it,
    ``Nats-Rollup`` purge earlier dead letters) is renamed ``Amebus-Original-<Name>``
    (``Nats-Msg-Id`` and ``Amebus-Event-Type`` keep their documented names
    ``Amebus-Original-Msg-Id`` and ``Amebus-Original-Event-Type``), and a name no client can
    send is dropped. amebus's own headers are set last and win.
    """
    headers: dict[str, str] = {}
    for name, value in (msg.headers or {}).items():
        key = name.strip()
        lower = key.lower()
        if lower in _RENAMED:
            key = _RENAMED[lower]
        elif lower.startswith("nats-"):
            key = "Amebus-Original-" + key
        if _TOKEN.fullmatch(key):
            headers[key] = _header_value(value)
    headers.update({
        "Amebus-Dead-Letter": "1",
        "Amebus-Original-Subject": _header_value(msg.subject),
        "Amebus-Original-Stream": _header_value(failure.stream),
        "Amebus-Original-Sequence": str(failure.stream_seq),
        "Amebus-Deliveries": str(failure.deliveries),
        "Amebus-Stage": failure.stage,
        "Amebus-Route": _header_value(failure.route or ""),
        "Amebus-Error": one_line(failure.error),
    })
    return headers


def _header_value(value: object) -> str:
    """A header value as is when it can be sent, else escaped (never cut: a subject must stay
    whole for a replay)."""
    text = value if type(value) is str else safe_text(value, None, collapse=False)
    return text if text.isprintable() else safe_text(text, None, collapse=False)


def one_line(value: object, limit: int = 300) -> str:
    """``value`` (an exception as ``Type: message``) on one safe line of at most ``limit``
    chars: :func:`amebus._text.safe_text`, which never fails."""
    return safe_text(value, limit)
