"""The durable pull consumer a service asks for: its filter subjects and its configuration.

Pure (no server calls); :mod:`amebus.binding` sends it, :mod:`amebus.plan` compares it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nats.js import api

from amebus.errors import ConfigurationError
from amebus.provision import consumer_metadata, deliver_fields
from amebus.settlement import server_max_deliver
from amebus.subjects import covers, validate_pattern

if TYPE_CHECKING:
    from amebus.routing import ServiceMeta

__all__ = ["consumer_config", "server_filters"]


def server_filters(cls: ServiceMeta, mode: str, stream: api.StreamConfig) -> list[str]:
    """The consumer's filter subjects for ``server_filter`` mode; [] means the whole stream.

    ``routes`` filters exactly (unrouted subjects never reach the client). ``stream`` takes
    the whole stream and skips unrouted subjects in the client. ``auto`` filters exactly when
    the filters are free (they equal or cover the stream's subjects) or required (a work-queue
    stream, where an ack deletes), and takes the whole stream otherwise: nats-server slows a
    filtered consumer down with the number of distinct subjects in the stream.
    """
    if mode not in ("auto", "routes", "stream"):
        msg = (f"{cls.__name__}.server_filter is {mode!r}; use 'auto', 'routes' or 'stream'")
        raise ConfigurationError(msg)
    exact = list(cls.filter_subjects)
    stream_subjects = [validate_pattern(s) for s in stream.subjects or []]
    routes = [validate_pattern(p) for p in exact]
    covered = bool(stream_subjects) and all(
        any(covers(r, s) for r in routes) for s in stream_subjects)
    workqueue = stream.retention == api.RetentionPolicy.WORK_QUEUE
    if mode == "routes" or workqueue or (mode == "auto" and covered):
        return [] if covered else exact
    return []


def consumer_config(cls: ServiceMeta, options: Mapping[str, Any], durable: str,
                    filters: list[str]) -> api.ConsumerConfig:
    """The durable pull consumer a service needs."""
    return api.ConsumerConfig(
        durable_name=durable,
        ack_policy=api.AckPolicy.EXPLICIT,
        **deliver_fields(options.get("deliver_policy", "all"), cls.__name__),
        ack_wait=float(options["ack_wait"]),
        # amebus counts handler attempts itself (amebus.attempts); the server's limit is a
        # backstop well above it for deliveries that never reached a handler.
        max_deliver=server_max_deliver(int(options["max_deliver"]),
                                       options.get("server_max_deliver")),
        max_ack_pending=int(options["max_ack_pending"]),
        filter_subject=filters[0] if len(filters) == 1 else "",
        filter_subjects=filters if len(filters) > 1 else None,
        metadata=consumer_metadata(cls),
    )
