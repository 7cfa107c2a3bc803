"""Sizes on the NATS wire, counted as nats-server counts them against ``max_payload`` and a
client's pending bytes."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["header_size"]


def header_size(headers: Mapping[str, str] | None) -> int:
    """The bytes of a header block: ``NATS/1.0\\r\\n``, ``key: value\\r\\n`` per header, and the
    closing ``\\r\\n`` (0 for no headers). Keys and values count as UTF-8 bytes, as sent."""
    if not headers:
        return 0
    return 12 + sum(len(k.encode()) + len(v.encode()) + 4 for k, v in headers.items())
