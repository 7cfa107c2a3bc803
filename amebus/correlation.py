"""Correlation ids: which input a result event answers, across any number of hops.

A handler's result events carry ``Amebus-Correlation-Id``: the input's own correlation id,
else its ``Nats-Msg-Id``, else its stream and sequence (``ORDERS:42``). They also carry it as
``correlation_id``, the header FastStream reads and writes, so both kinds of service follow
one chain; and, when no tracer injects its own, the input's W3C ``traceparent`` and
``tracestate``, so a trace is not cut by a hop that does not trace.
"""

from __future__ import annotations

from nats.aio.msg import Msg
from nats.js.api import Header

from amebus.settlement import reply_meta

__all__ = ["CORRELATION_HEADER", "FASTSTREAM_HEADER", "correlation_headers", "correlation_id"]

CORRELATION_HEADER = "Amebus-Correlation-Id"
"""The header naming the correlation id of a message."""

FASTSTREAM_HEADER = "correlation_id"
"""The header FastStream (0.5, 0.6) keeps its correlation id in."""

_TRACE = ("traceparent", "tracestate")


def correlation_id(msg: Msg) -> str | None:
    """The correlation id of a received message (``None`` for a core message with none).

    ``Amebus-Correlation-Id``, else FastStream's ``correlation_id``, else ``Nats-Msg-Id``,
    else ``<stream>:<sequence>`` of a JetStream delivery.
    """
    headers = msg.headers or {}
    for name in (CORRELATION_HEADER, FASTSTREAM_HEADER, Header.MSG_ID):
        value = headers.get(name)
        if value:
            return value
    stream, seq, _ = reply_meta(msg.reply)
    return f"{stream}:{seq}" if stream else None


def correlation_headers(msg: Msg) -> dict[str, str]:
    """The headers a result event of ``msg`` carries."""
    cid = correlation_id(msg)
    out = {} if cid is None else {CORRELATION_HEADER: cid, FASTSTREAM_HEADER: cid}
    headers = msg.headers or {}
    for name in _TRACE:
        if name in headers:
            out[name] = headers[name]  # a tracer's inject, after this, replaces them
    return out
