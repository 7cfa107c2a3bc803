"""The wire side of publishing: the headers that steer the server (per-message TTL, expected
sequences, schedules), the size checks, and reading the server's acks and refusals into typed
errors that name the fix.

Header names and error codes checked against nats-server 2.15.1 (ADR-43 TTL, ADR-50 atomic
batches, ADR-51 schedules).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus import _natsio
from amebus.errors import (
    NoStreamError,
    PublishError,
    SequenceConflictError,
    StreamSettingError,
    SubjectError,
)

__all__ = ["MAX_CONTROL_LINE", "MAX_SUBJECT", "check_size", "connection", "expectations",
           "header_size", "no_stream", "read_ack", "refused", "ttl_header"]

MAX_CONTROL_LINE = 4096
"""Bytes of a publish's control line (``HPUB <subject> <reply> <sizes>``) nats-server accepts
by default (``max_control_line``); measured on 2.15.1: a longer line is answered with
``-ERR 'Maximum Control Line Exceeded'`` and the connection is closed (the server checks it
only when the line spans reads, so some longer lines pass: never rely on it)."""

MAX_SUBJECT = 3_968
"""The longest subject amebus publishes: ``MAX_CONTROL_LINE`` less room for nats-py's reply
inbox and the sizes (a default inbox prefix; a longer ``inbox_prefix`` leaves less)."""

_NO_RESPONDERS = "503"
_WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")
# err_code -> (the stream setting that enables the feature, the feature); 2.15.1 lets an
# update_stream turn each on for a stream that already holds messages (measured)
_SETTINGS = {
    10166: ("allow_msg_ttl", "per-message TTL (ttl=)"),
    10174: ("allow_atomic", "atomic batches (atomic=True)"),
    10188: ("allow_msg_schedules", "message schedules (at=/delay=/every=/cron=)"),
}
_SEQUENCE_CONFLICTS = (10071, 10164)  # wrong last sequence; the same inside an atomic batch


def ttl_header(ttl: float | timedelta) -> str:
    """The ``Nats-TTL`` value for ``ttl`` seconds (whole seconds, at least 1: the server's
    granularity)."""
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 1:
        msg = (f"ttl is {ttl!r}; give seconds of at least 1 (a number or a timedelta): the "
               f"server counts message TTLs in whole seconds")
        raise ValueError(msg)
    return f"{round(seconds)}s"


def expectations(*, last_subject_sequence: int | None, last_sequence: int | None,
                 stream: str | None) -> dict[str, str]:
    """The ``Nats-Expected-*`` headers of optimistic concurrency."""
    hdrs: dict[str, str] = {}
    for name, value in (("expected_last_subject_sequence", last_subject_sequence),
                        ("expected_last_sequence", last_sequence)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            msg = (f"{name} is {value!r}; give a stream sequence (an int >= 0; 0 means no "
                   f"message yet)")
            raise ValueError(msg)
    if last_subject_sequence is not None:
        hdrs[Header.EXPECTED_LAST_SUBJECT_SEQUENCE] = str(last_subject_sequence)
    if last_sequence is not None:
        hdrs[Header.EXPECTED_LAST_SEQUENCE] = str(last_sequence)
    if stream is not None:
        if not isinstance(stream, str) or not stream:
            msg = f"expected_stream is {stream!r}; give the stream's name"
            raise ValueError(msg)
        hdrs[Header.EXPECTED_STREAM] = stream
    return hdrs


def rfc3339(at: datetime) -> str:
    """``at`` as the UTC RFC 3339 time the server's ``@at`` schedule parses."""
    if at.tzinfo is None:
        msg = (f"at is {at!r}, a naive datetime; give an aware one, like "
               f"datetime.now(timezone.utc) + timedelta(minutes=5)")
        raise ValueError(msg)
    return at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def header_size(headers: Mapping[str, str] | None) -> int:
    """The bytes of a header block: ``NATS/1.0\\r\\n``, ``key: value\\r\\n`` per header, and the
    closing ``\\r\\n`` (0 for no headers). Keys and values count as UTF-8 bytes, as sent: the
    one formula for the dead-letter size check, the publish checks and the pull byte budget."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())


def check_size(nc: NATS, subject: str, payload: bytes, hdrs: Mapping[str, str]) -> None:
    """Refuse what the server would refuse: it counts headers too, and answers an oversized
    message, or a control line over its limit, with -ERR, on which nats-py closes the
    connection for good."""
    limit = nc.max_payload
    header = header_size(hdrs)
    size = len(payload) + header
    if size > limit:
        msg = (f"the event for {subject!r} is {size} bytes with its headers ({len(payload)} "
               f"of payload), over the server's max_payload of {limit} bytes; nothing was "
               f"sent: make the event smaller or raise max_payload in the server config")
        raise PublishError(msg, subject=subject)
    # The reply subject nats-py uses: its request inbox (new_inbox() and a 22-character
    # token, nats-py 2.16) for Event.publish, the batch's inbox and an index for publish_many.
    reply = len(nc.new_inbox()) + 23
    line = len(b"HPUB   ") + len(subject.encode()) + reply + len(str(header)) + len(str(size))
    if line > MAX_CONTROL_LINE:
        msg = (f"the subject {_cut(subject)} is {len(subject.encode())} bytes: with the reply "
               f"subject and the sizes its publish line would be {line} bytes, over the "
               f"server's control-line limit of {MAX_CONTROL_LINE} (its default "
               f"max_control_line; it closes the connection on a longer one); nothing was "
               f"sent: keep subjects under {MAX_SUBJECT} bytes (hash or shorten long tokens)")
        raise SubjectError(msg)


def _cut(subject: str) -> str:
    if len(subject) <= 80:
        return repr(subject)
    return f"{subject[:60]!r}..."


def no_stream(subject: str) -> NoStreamError:
    msg = (f"no JetStream stream captures the subject {subject!r}, so the event was not stored; "
           f"create a stream whose subjects include it, e.g. {subject.split('.')[0] + '.>'!r}")
    return NoStreamError(msg, subject=subject)


def refused(subject: str, description: object, code: object, err_code: object,
            stream: object = None) -> PublishError:
    """The typed error of a refusal: a disabled stream setting and a sequence conflict get
    their own class and a message naming the fix."""
    said = f"{description} (code {code}, err_code {err_code})"
    name = stream if isinstance(stream, str) and stream else "<stream>"  # nats-py's APIError
    # (2.16) drops the reply's stream name; publish_many's replies keep it
    if err_code in _SETTINGS:
        setting, feature = _SETTINGS[err_code]
        msg = (f"the server did not store the event on {subject!r}: {said}; the stream "
               f"{name!r} capturing it does not allow {feature}: set {setting}=True in its "
               f"StreamConfig (js.update_stream works on a stream holding messages)")
        return StreamSettingError(msg, subject=subject, setting=setting)
    if err_code in _SEQUENCE_CONFLICTS:
        found = _WRONG_LAST.search(str(description))
        actual = int(found.group(1)) if found else None
        now = "" if actual is None else f"; the last sequence is {actual}"
        msg = (f"the server did not store the event on {subject!r}: {said}{now}: another "
               f"writer got there first; read the current state and retry with its sequence")
        return SequenceConflictError(msg, subject=subject, actual=actual)
    msg = f"the server did not store the event on {subject!r}: {said}"
    return PublishError(msg, subject=subject)


def read_ack(msg: Msg, subject: str) -> PubAck | PublishError:
    """The ack, or the error, a JetStream publish reply carries."""
    if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
        return no_stream(subject)
    try:
        reply = json.loads(msg.data)
        if "error" in reply:
            error = reply["error"]
            return refused(subject, error.get("description"), error.get("code"),
                           error.get("err_code"), reply.get("stream"))
        return PubAck.from_response(reply)
    except (ValueError, TypeError, AttributeError):
        text = (f"the reply on {subject!r} is not a JetStream ack: {msg.data[:200]!r}; is a "
                f"core subscriber answering on this subject?")
        return PublishError(text, subject=subject)


def connection(js: JetStreamContext) -> NATS:
    # nats-py has no public accessor for the connection (amebus._natsio reads it). Its public
    # publish_async() never resolves the future of a publish the server refuses (2.16:
    # APIError.from_error raises inside the reply callback) and leaks its pending slot, so
    # publish_many pipelines itself.
    return _natsio.jetstream_parts(js)[0]
