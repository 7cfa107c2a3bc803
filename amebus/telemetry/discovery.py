"""NATS service discovery (ADR-32, what ``nats micro ls/info/stats`` and ``amebus status``
read): a serving service answers ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``, also in
their ``.<name>`` and ``.<name>.<id>`` forms.

The wire format is nats-py's own (``nats.micro.service``'s dataclasses and their ``to_dict``).
Its ``Service`` is not used: its endpoints are core request/reply subscriptions counting their
own requests, while amebus's routes are JetStream consumers counted by the consumer.
"""

from __future__ import annotations

import contextlib
import json
import re
from datetime import UTC, datetime
from importlib import metadata as _metadata
from typing import TYPE_CHECKING, Any

from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceConfig,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

from amebus.deadletter import one_line
from amebus.telemetry.observer import BaseObserver, Serving

if TYPE_CHECKING:
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from amebus.tracing import Failure

__all__ = ["AMEBUS_METADATA_KEY", "Discovery"]

AMEBUS_METADATA_KEY = "amebus"
"""Service metadata key set by amebus (its version): how ``amebus status`` knows its own."""

_BAD_NAME = re.compile(r"[^A-Za-z0-9_-]")


def _amebus_version() -> str:
    try:
        return _metadata.version("amebus")
    except _metadata.PackageNotFoundError:
        return "0"


class Discovery(BaseObserver):
    """Answers the ``$SRV`` discovery requests for one serving service.

    Args:
        name: the service name (default: the class name); letters, digits, ``-`` and ``_``.
        version: the service's semantic version (default: the class attribute ``version`` if
            it has one, else ``"0.0.0"``).
        description: a free text shown by ``nats micro info``.
        metadata: extra string pairs in every reply (``amebus`` is set to amebus's version).
    """

    def __init__(self, name: str | None = None, version: str | None = None, *,
                 description: str | None = None,
                 metadata: dict[str, str] | None = None) -> None:
        self.name, self.version = name, version
        self.description = description
        self.metadata = dict(metadata or {})
        self.id = NUID().next().decode()
        self._serving: Serving | None = None
        self._subs: list[Subscription] = []
        self._errors: dict[str, int] = {}
        self._last_error: dict[str, str] = {}
        self._started = datetime.now(UTC)

    async def start(self, serving: Serving) -> None:
        """Subscribe the nine control subjects."""
        cls = type(serving.service)
        name = self.name or cls.__name__
        version = self.version or str(getattr(cls, "version", "0.0.0"))
        try:
            ServiceConfig(name=name, version=version)  # nats-py's own checks of both
        except ValueError as exc:
            msg = (f"discovery name {name!r} / version {version!r}: {exc} (pass "
                   f"Discovery(name=..., version='1.2.3'))")
            raise ValueError(msg) from None
        self.name, self.version = name, version
        self.metadata.setdefault(AMEBUS_METADATA_KEY, _amebus_version())
        self._serving = serving
        self._started = datetime.now(UTC)
        serving.lag.start()
        handlers = {ServiceVerb.PING: self._ping, ServiceVerb.INFO: self._info,
                    ServiceVerb.STATS: self._stats}
        for verb, handler in handlers.items():
            for subject in (control_subject(verb), control_subject(verb, name),
                            control_subject(verb, name, self.id)):
                self._subs.append(await serving.nc.subscribe(subject, cb=handler))

    async def stop(self) -> None:
        """Unsubscribe: this instance no longer answers."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._serving = None

    def failed(self, failure: Failure) -> None:
        """Count the failure as the route's error."""
        route = failure.route or ""
        self._errors[route] = self._errors.get(route, 0) + 1
        self._last_error[route] = one_line(failure.error)

    # -- the replies ---------------------------------------------------------------------------

    def ping(self) -> ServicePing:
        """The ``PING`` reply."""
        return ServicePing(id=self.id, name=self.name or "", version=self.version or "",
                           metadata=self.metadata)

    def info(self) -> ServiceInfo:
        """The ``INFO`` reply: each route an endpoint, pattern/stream/durable in metadata."""
        serving = self._serving
        endpoints = []
        if serving is not None:
            for route in type(serving.service).routes:
                endpoints.append(EndpointInfo(
                    name=_BAD_NAME.sub("_", route.name), subject=route.pattern,
                    queue_group=serving.durable,
                    metadata={"route": route.name, "pattern": route.pattern,
                              "stream": serving.stream, "durable": serving.durable}))
        return ServiceInfo(name=self.name or "", id=self.id, version=self.version or "",
                           description=self.description, endpoints=endpoints,
                           metadata=self.metadata)

    def stats(self) -> ServiceStats:
        """The ``STATS`` reply: per route handled, failures and handler time, with acked,
        naked, termed, dead-lettered and the consumer's lag in ``data``."""
        serving = self._serving
        endpoints = []
        if serving is not None:
            lag = serving.lag
            consumer = {"stream": serving.stream, "durable": serving.durable,
                        "num_pending": lag.num_pending, "num_ack_pending": lag.num_ack_pending,
                        "num_redelivered": lag.num_redelivered,
                        "num_waiting": lag.num_waiting,
                        "pinned": None}  # standby: whether it holds the pin now
            stats = serving.service.stats
            if stats.standby:
                consumer["pinned"] = stats.pinned
            by_name = serving.service.stats.routes
            for route in type(serving.service).routes:
                counts = by_name[route.name]
                total_ns = int(counts.handler_seconds * 1e9)
                endpoints.append(EndpointStats(
                    name=_BAD_NAME.sub("_", route.name), subject=route.pattern,
                    queue_group=serving.durable, num_requests=counts.handled,
                    num_errors=self._errors.get(route.name, 0),
                    processing_time=total_ns,
                    average_processing_time=total_ns // counts.handled if counts.handled else 0,
                    last_error=self._last_error.get(route.name),
                    data={"route": route.name, "acked": counts.acked, "naked": counts.naked,
                          "termed": counts.termed, "dead_lettered": counts.dead_lettered,
                          "consumer": consumer}))
        return ServiceStats(id=self.id, name=self.name or "", version=self.version or "",
                            started=self._started.replace(tzinfo=None), endpoints=endpoints,
                            metadata=self.metadata)

    async def _reply(self, msg: Msg, body: dict[str, Any]) -> None:
        if msg.reply:
            with contextlib.suppress(Exception):  # the asker left, or we are disconnected
                await msg.respond(json.dumps(body).encode())

    async def _ping(self, msg: Msg) -> None:
        await self._reply(msg, self.ping().to_dict())

    async def _info(self, msg: Msg) -> None:
        await self._reply(msg, self.info().to_dict())

    async def _stats(self, msg: Msg) -> None:
        await self._reply(msg, self.stats().to_dict())
