"""Idempotent handlers and synchronous acks: ``Route(..., idempotent=True, ack_sync=True)``.

JetStream delivers at least once: a process that dies after a handler's side effect and
before its ack gets the message again. An idempotent route remembers each message it
handled in a NATS key-value bucket (one key per route and message, kept ``ttl`` seconds):

1. a delivery whose key is in the bucket is acked without running the handler;
2. else the handler runs; its result events are published with message ids derived from the
   key (``<key>:0``, ``<key>:1``, ...), so a rerun's results are deduplicated by the server;
3. the key is written, then the message is acked (synchronously with ``ack_sync``: the
   server confirms it, and a lost ack is an error of this delivery, not a silent repeat).

The key is the message's ``Nats-Msg-Id`` (else its stream and sequence), or what
``Idempotent(key=...)`` returns for the handler's first argument (the event). What it does
not cover: a crash inside the handler, before it returns (the effect ran, the key was not
written), and two deliveries of one message running at the same time (after ``ack_wait``
expired on a slow handler): make such effects idempotent themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from amebus.errors import ConfigurationError

__all__ = ["DEFAULT_BUCKET", "Idempotent", "check_idempotent"]
DEFAULT_BUCKET = "amebus_idempotency"
"""The key-value bucket idempotent routes use unless told otherwise (stream
``KV_amebus_idempotency``, subjects ``$KV.amebus_idempotency.>``)."""

_DONE = b"1"


@attrs.frozen
class Idempotent:
    """How a route remembers the messages it handled.

    Attributes:
        key: computes the key from the handler's first argument (the decoded event); default
            the message's ``Nats-Msg-Id``, else its stream and sequence.
        bucket: the key-value bucket (created on first use with this ``ttl``).
        ttl: seconds a key is kept: at least the longest time a redelivery can take
            (``ack_wait`` times ``max_deliver``, plus backoff) and the stream's duplicate
            window for republished messages.
    """

    key: Callable[[Any], object] | None = None
    bucket: str = DEFAULT_BUCKET
    ttl: float = 86_400.0


def check_idempotent(value: object, where: str) -> Idempotent | None:
    """``Route(idempotent=...)`` as an ``Idempotent``, or a ConfigurationError."""
    if value is None or value is False:
        return None
    if value is True:
        return Idempotent()
    if isinstance(value, Idempotent):
        if value.key is not None and not callable(value.key):
            msg = f"{where} idempotent key={value.key!r}: give a function of the event"
            raise ConfigurationError(msg)
        if isinstance(value.ttl, bool) or not isinstance(value.ttl, int | float) or not (
                value.ttl >= 1):
            msg = f"{where} idempotent ttl={value.ttl!r}: give seconds of at least 1"
            raise ConfigurationError(msg)
        return value
    msg = (f"{where} idempotent={value!r}: give True, or Idempotent(key=..., bucket=..., "
           f"ttl=...)")
    raise ConfigurationError(msg)
