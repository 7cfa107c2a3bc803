"""Bind a service to the server: check or create its stream, create or update its consumer.

Configuration drift is never ignored: a field the server can update is updated (and logged),
a field it refuses to change is a ``ConfigurationError`` naming it and the way out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from nats.aio.client import Client
from nats.js import api
from nats.js.errors import APIError, NotFoundError

from amebus import _natsio
from amebus.catchup import added_routes, recorded_routes, routes_metadata
from amebus.consumer_config import consumer_config, server_filters
from amebus.errors import ConfigurationError
from amebus.plan import bind_as_is
from amebus.priority import (
    add_consumer,
    check_version,
    consumer_info,
    priority_drift,
    priority_fields,
)
from amebus.provision import (
    bind_error_hint,
    is_owned,
    merged_metadata,
    refuse_foreign,
)
from amebus.routing import durable_name
from amebus.slowfilter import warn_slow_filter

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.routing import ServiceMeta

__all__ = ["MINIMUM_SERVER", "bind_consumer", "check_server", "connection_of",
           "consumer_config"]

log = logging.getLogger(__name__)

# Fields amebus sets, compared with what the server holds. ack_policy and pull mode are fixed.
# backoff: amebus sends each nak's delay itself; a server-side backoff (made by another tool)
# pins ack_wait to backoff[0], so it is cleared.
_UPDATABLE = ("ack_wait", "max_deliver", "max_ack_pending", "filter_subject", "filter_subjects",
              "backoff")

MINIMUM_SERVER = (2, 10, 4)
"""The oldest nats-server that keeps the settlement table: ``+TERM <reason>`` (2.10.4) and
``filter_subjects`` (2.10); 2.9 ignores both silently."""


def check_server(nc: Client) -> None:
    """Refuse a server too old to keep the settlement table (``ConfigurationError``)."""
    version = nc.connected_server_version
    try:
        found = (version.major, version.minor, version.patch)
    except (TypeError, ValueError, AttributeError):  # unparsable: let the server speak
        return
    if found == (0, 0, 0):  # not known (nats-py reports 0.0.0 before INFO): nothing to check
        return
    if found < MINIMUM_SERVER:
        minimum, have = (".".join(map(str, v)) for v in (MINIMUM_SERVER, found))
        msg = (f"nats-server {have} is too old for amebus, which needs {minimum} or newer "
               f"(older servers drop filter_subjects and ignore +TERM reasons); upgrade it")
        raise ConfigurationError(msg)


def connection_of(js: JetStreamContext | Client) -> tuple[Client, str]:
    """The client and JetStream API prefix behind ``js`` (a context or a client)."""
    if isinstance(js, Client):
        return js, api.DEFAULT_PREFIX
    return _natsio.jetstream_parts(js)


async def bind_consumer(js: JetStreamContext, cls: ServiceMeta, options: Mapping[str, Any]
                        ) -> tuple[str, str, bool, api.ConsumerConfig, tuple[list[str], int]]:
    """Make sure the stream and the durable consumer exist as declared.

    Returns the stream and durable names, whether the server filters by route, the
    consumer's configuration as the server holds it (its effective ``ack_wait``, ...), and
    the routes added since the durable last ran with the stream sequence it had delivered up
    to then (``([], 0)`` when none were added).
    """
    stream = options["stream"]
    if not stream:
        msg = (f"{cls.__name__} has no stream; set `stream = 'ORDERS'` on the class or pass "
               f"serve(js, stream='ORDERS')")
        raise ConfigurationError(msg)
    durable = durable_name(cls, options["durable"])
    if options.get("provision", "update") in ("verify", "bind"):  # change nothing
        return await bind_as_is(js, cls, options, stream, durable)
    stream_config = await _ensure_stream(js, cls, stream, options.get("stream_subjects"))
    filters = server_filters(cls, options["server_filter"], stream_config)
    await warn_slow_filter(*connection_of(js), cls, options["server_filter"], stream, filters)
    wanted = consumer_config(cls, options, durable, filters)
    routes = list(cls.filter_subjects)
    wanted.metadata = {**(wanted.metadata or {}), **routes_metadata(routes)}
    widened: tuple[list[str], int] = ([], 0)
    priority = priority_fields(options)  # nats-py's ConsumerConfig has no such fields
    check_version(cls.__name__, _natsio.jetstream_parts(js)[0].connected_server_version, priority)
    try:
        current_info, current_priority = await consumer_info(js, stream, durable)
        current: api.ConsumerConfig | None = current_info.config
    except NotFoundError:
        current = None
    if current is not None:
        _refuse_fixed_drift(cls, stream, durable, current)
        retimed = priority_drift(cls.__name__, stream, durable, current_priority, priority)
        before = recorded_routes(current)
        added = added_routes(before, routes) if before is not None else []
        if added:  # a filtered durable's position may run past what it delivered: see below
            widened = (added, current_info.delivered.stream_seq if not _filters(current) else -1)
        changed = [f for f in _UPDATABLE if _norm(getattr(current, f)) != _norm(getattr(wanted, f))]
        ours = {k: v for k, v in (current.metadata or {}).items() if not k.startswith("_nats")}
        if (is_owned(current) or options.get("provision", "update") == "adopt") and any(
                ours.get(k) != v for k, v in wanted.metadata.items()):
            changed.append("metadata")  # a consumer made by others keeps its metadata
        if not changed and not retimed:
            return (stream, durable, bool(filters),
                    _refuse_backoff(cls, stream, durable, current), widened)
        described = [f"{f} {getattr(current, f)!r} -> {getattr(wanted, f)!r}"
                     for f in changed] + retimed
        refuse_foreign(cls, options, stream, durable, current, described)
        log.warning("%s: updating consumer %s on %s: %s", cls.__name__, durable, stream,
                    ", ".join(described))
        # Keep what amebus does not manage (deliver policy, replicas, ...) as the server has it.
        wanted = current.evolve(**{f: getattr(wanted, f) for f in _UPDATABLE},
                                metadata={**merged_metadata(current, cls),
                                          **routes_metadata(routes)})
    try:
        info = await add_consumer(js, stream, wanted, priority)
    except APIError as exc:
        action = "update" if current is not None else "create"
        msg = (f"the server refused to {action} consumer {durable!r} on stream {stream!r} "
               f"with filter subjects {list(cls.filter_subjects)}: {exc.description} "
               f"(err_code {exc.err_code}); "
               f"{bind_error_hint(exc, cls, options, stream, durable)}")
        raise ConfigurationError(msg) from exc
    if widened[1] < 0:
        # A filtered durable has scanned past the messages its filter skipped, up to the end of
        # the stream: everything stored now is replayed (one stored in between may come twice).
        widened = (widened[0], (await js.stream_info(stream)).state.last_seq)
    return (stream, durable, bool(filters), _refuse_backoff(cls, stream, durable, info.config),
            widened)


def _filters(config: api.ConsumerConfig) -> bool:
    return bool(config.filter_subject or config.filter_subjects)


def _refuse_backoff(cls: ServiceMeta, stream: str, durable: str, config: api.ConsumerConfig
                    ) -> api.ConsumerConfig:
    if config.backoff:
        msg = (f"{cls.__name__}: consumer {durable!r} on stream {stream!r} keeps a server-side "
               f"backoff {config.backoff!r}, which pins ack_wait to {config.backoff[0]!r}s and "
               f"could not be cleared; remove it (`nats consumer edit {stream} {durable}`) or "
               f"delete the consumer: amebus sends each retry's delay with its nak")
        raise ConfigurationError(msg)
    return config


async def _ensure_stream(js: JetStreamContext, cls: ServiceMeta, stream: str,
                         subjects: tuple[str, ...] | None) -> api.StreamConfig:
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        if not subjects:
            msg = (f"stream {stream!r} does not exist; create it (`nats stream add {stream} "
                   f"--subjects '{cls.filter_subjects[0]}'`) or set `stream_subjects` on "
                   f"{cls.__name__} so amebus creates it")
            raise ConfigurationError(msg) from None
        created = await js.add_stream(name=stream, subjects=list(subjects),
                                      storage=api.StorageType.FILE)
        log.info("created stream %s on %s", stream, list(subjects))
        return created.config
    if subjects:
        have = list(info.config.subjects or [])
        missing = [s for s in subjects if s not in have]
        if missing:
            try:
                info = await js.update_stream(info.config.evolve(subjects=have + missing))
            except APIError as exc:
                msg = (f"could not add subjects {missing} to stream {stream!r}: "
                       f"{exc.description}; another stream may already capture them")
                raise ConfigurationError(msg) from exc
            log.info("added subjects %s to stream %s", missing, stream)
    return info.config


def _refuse_fixed_drift(cls: ServiceMeta, stream: str, durable: str,
                        current: api.ConsumerConfig) -> None:
    refused = []
    if current.ack_policy != api.AckPolicy.EXPLICIT:
        refused.append(f"ack_policy is {_norm(current.ack_policy)!r}, amebus needs 'explicit'")
    if current.deliver_subject:
        refused.append(f"deliver_subject is {current.deliver_subject!r} (a push consumer), "
                       f"amebus needs a pull consumer")
    if refused:
        msg = (f"{cls.__name__}: consumer {durable!r} on stream {stream!r} exists with "
               f"settings the server cannot change: {'; '.join(refused)}. Delete it "
               f"(`nats consumer rm {stream} {durable}`) or set another `durable`")
        raise ConfigurationError(msg)


def _norm(value: Any) -> Any:
    if value in ("", None, []):
        return None
    if isinstance(value, list):
        return sorted(value)
    return getattr(value, "value", value)
