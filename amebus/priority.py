"""Active/standby and overflow through nats-server priority groups (ADR-42, 2.11+): the
settings, the consumer fields they need, their drift rules, and ``UNPIN``.

nats-py 2.16 knows nothing of priority groups (its ``ConsumerConfig`` drops the fields both
ways), so the consumer is created and read here with raw ``$JS.API`` requests. The wire format:

- consumer config: ``priority_groups: ["amebus"]``, ``priority_policy: "pinned_client"`` (with
  ``priority_timeout`` in ns) or ``"overflow"``. ADR-42 forbids adding, removing or switching
  the policy on an existing consumer (nats-server 2.15.1 accepts it, but then a pull without
  the group is refused with 400, and so is one with a pin id or thresholds on a consumer
  without that policy), so amebus refuses to; ``priority_timeout`` is updated in place.
- consumer info: ``priority_groups: [{"group": ..., "pinned_client_id": ..., "pinned_ts": ...}]``.
- unpin: ``$JS.API.CONSUMER.UNPIN.<stream>.<durable>`` with ``{"group": "amebus"}``.

The pull side (``group``, ``id``, ``min_pending``, the ``Nats-Pin-Id`` header, 423) is in
:mod:`amebus.pinning`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attrs
from nats.js import api
from nats.js.errors import APIError

from amebus import _natsio
from amebus.errors import ConfigurationError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["GROUP", "MINIMUM_SERVER", "PRIORITY_OPTIONS", "Overflow", "PinHooks",
           "add_consumer", "check_priority", "check_version", "consumer_info",
           "priority_drift", "priority_fields", "unpin"]

log = logging.getLogger(__name__)

GROUP = "amebus"
"""The one priority group amebus declares on a consumer (the server allows one today)."""

MINIMUM_SERVER = (2, 11)
"""The first nats-server with priority groups (an older one ignores the fields silently)."""

PRIORITY_OPTIONS = ("standby", "priority_timeout", "overflow")
"""The configuration names of this module (class attributes and ``serve()`` keywords)."""


def _threshold(name: str) -> Any:
    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            msg = (f"Overflow({name}={value!r}): give a whole number of messages >= 1, like "
                   f"{name}=1000, or leave it out")
            raise ConfigurationError(msg)

    return check


@attrs.frozen
class Overflow:
    """An overflow member of the durable: it pulls only while the consumer is behind.

    ``Overflow(min_pending=1000)`` gets messages only while at least 1000 messages wait to be
    delivered (``num_pending``); ``min_ack_pending`` likewise counts messages delivered and
    not yet settled; with both, either suffices (the server's rule). ``Overflow()`` (no
    threshold) is a primary: it always pulls, and the server serves it before the others.
    Every instance on the durable must use ``overflow``; the thresholds may differ per
    instance (``serve(js, overflow=Overflow())`` for the primaries).
    """

    min_pending: int | None = attrs.field(default=None, validator=_threshold("min_pending"))
    min_ack_pending: int | None = attrs.field(default=None,
                                              validator=_threshold("min_ack_pending"))

    def fields(self) -> dict[str, int]:
        """The pull request's threshold fields."""
        return {k: v for k, v in (("min_pending", self.min_pending),
                                  ("min_ack_pending", self.min_ack_pending)) if v is not None}


class PinHooks:
    """The priority settings of a :class:`~amebus.service.Service` and its pin hooks.

    Attributes:
        standby: True: one instance of the durable consumes (the server pins it); the others
            wait and take over when it stops pulling for ``priority_timeout``, or at once when
            it stops serving gracefully (False).
        priority_timeout: seconds without a pull after which the server moves the pin (30).
        overflow: an :class:`Overflow`: the durable uses the overflow policy (None).
    """

    standby: ClassVar[bool] = False
    priority_timeout: ClassVar[float] = 30.0
    overflow: ClassVar[Overflow | None] = None

    def on_pinned(self, pin_id: str) -> Any:
        """Called when this instance becomes the one the server delivers to (``standby``);
        may be a coroutine. The default does nothing (amebus logs it at INFO)."""

    def on_unpinned(self) -> Any:
        """Called when this instance loses the pin (another one took over, or ``amebus
        unpin``) or stops serving while pinned; may be a coroutine. The default does nothing."""


def check_priority(owner: str, options: Mapping[str, Any]) -> None:
    """Refuse a bad ``standby`` / ``priority_timeout`` / ``overflow`` (``ConfigurationError``)."""
    standby, timeout, overflow = (options[name] for name in PRIORITY_OPTIONS)
    if not isinstance(standby, bool):
        msg = f"{owner}.standby is {standby!r}; give True (active/standby) or False"
        raise ConfigurationError(msg)
    if (isinstance(timeout, bool) or not isinstance(timeout, int | float)
            or not 0.1 <= timeout <= 86400):
        msg = (f"{owner}.priority_timeout is {timeout!r}; give seconds between 0.1 and 86400 "
               f"as a number, like 30.0 (how long a silent pinned instance keeps the pin)")
        raise ConfigurationError(msg)
    if overflow is not None and not isinstance(overflow, Overflow):
        msg = (f"{owner}.overflow is {overflow!r}; give amebus.Overflow(min_pending=1000) "
               f"(or Overflow() for a primary), or None")
        raise ConfigurationError(msg)
    if standby and overflow is not None:
        msg = (f"{owner} sets both standby = True and overflow = {overflow!r}; a consumer has "
               f"one priority policy: choose pinned (standby) or overflow")
        raise ConfigurationError(msg)


def priority_fields(options: Mapping[str, Any]) -> dict[str, Any]:
    """The consumer config fields of the options ({} when no priority group is used)."""
    if options.get("standby"):
        return {"priority_groups": [GROUP], "priority_policy": "pinned_client",
                "priority_timeout": int(float(options["priority_timeout"]) * 1e9)}
    if options.get("overflow") is not None:
        return {"priority_groups": [GROUP], "priority_policy": "overflow"}
    return {}


def check_version(owner: str, version: Any, fields: Mapping[str, Any]) -> None:
    """Refuse priority ``fields`` on a server older than 2.11 (``version``: nats-py's
    ``connected_server_version``), which would ignore them: every instance would consume."""
    try:
        found = (version.major, version.minor)
    except (TypeError, ValueError, AttributeError):  # unparsable: let the server speak
        return
    if fields and (0, 0) < found < MINIMUM_SERVER:
        setting = "standby" if fields.get("priority_policy") == "pinned_client" else "overflow"
        msg = (f"{owner}.{setting} needs nats-server 2.11 or newer (priority groups); the "
               f"server is {found[0]}.{found[1]} and would ignore it, so every instance would "
               f"consume: upgrade the server or drop the setting")
        raise ConfigurationError(msg)


def _policy(fields: Mapping[str, Any]) -> str:
    policy = fields.get("priority_policy") or "none"
    return "none" if policy == "none" or not fields.get("priority_groups") else str(policy)


def priority_drift(owner: str, stream: str, durable: str, current: Mapping[str, Any],
                   wanted: Mapping[str, Any]) -> list[str]:
    """The updatable priority differences (``priority_timeout``), as ``field old -> new``;
    a policy or group the server cannot change in place is a ``ConfigurationError``."""
    have, want = _policy(current), _policy(wanted)
    groups, want_groups = current.get("priority_groups") or [], wanted.get("priority_groups") or []
    if have != want or (want != "none" and groups != want_groups):
        setting = {"pinned_client": "standby = True", "overflow": "overflow = Overflow(...)",
                   "none": "neither standby nor overflow"}[want] if want in (
                       "pinned_client", "overflow", "none") else want
        msg = (f"{owner}: consumer {durable!r} on stream {stream!r} has priority policy "
               f"{have!r} (groups {groups}), and {setting} needs {want!r} (groups "
               f"{want_groups}); amebus does not add, remove or switch a priority policy on an "
               f"existing consumer (ADR-42 servers refuse it; where the server allows it, the "
               f"instances still serving with the old setting would have every pull refused): "
               f"stop every instance, then delete the consumer (`nats consumer rm {stream} "
               f"{durable}`; its position is lost) or change its priority fields yourself, "
               f"or serve under another `durable`")
        raise ConfigurationError(msg)
    old, new = current.get("priority_timeout") or 0, wanted.get("priority_timeout") or 0
    if want == "pinned_client" and old != new:
        return [f"priority_timeout {old / 1e9:g}s -> {new / 1e9:g}s"]
    return []


async def _request(js: JetStreamContext, subject: str, payload: Mapping[str, Any] | None
                   ) -> dict[str, Any]:
    nc, prefix = _natsio.jetstream_parts(js)
    data = json.dumps(payload).encode() if payload is not None else b""
    reply = await nc.request(f"{prefix}.{subject}", data, timeout=5.0)
    answer: dict[str, Any] = json.loads(reply.data or b"{}")
    if "error" in answer:
        APIError.from_error(answer["error"])  # raises NotFoundError, BadRequestError, ...
    return answer


async def consumer_info(js: JetStreamContext, stream: str, durable: str
                        ) -> tuple[Any, dict[str, Any]]:
    """The consumer's info (an ``api.ConsumerInfo``), and the priority fields of its config
    and state that nats-py drops (``NotFoundError`` when it does not exist)."""
    answer = await _request(js, f"CONSUMER.INFO.{stream}.{durable}", None)
    config = answer.get("config") or {}
    fields = {k: config[k] for k in ("priority_groups", "priority_policy", "priority_timeout")
              if k in config}
    fields["state"] = answer.get("priority_groups") or []
    info: Any = api.ConsumerInfo.from_response(answer)  # as loosely typed as nats-py's own
    return info, fields


async def add_consumer(js: JetStreamContext, stream: str, config: api.ConsumerConfig,
                       fields: Mapping[str, Any]) -> api.ConsumerInfo:
    """Create or update the durable ``config`` with the priority ``fields`` (nats-py's own
    ``add_consumer`` when there are none)."""
    if not fields:
        info: api.ConsumerInfo = await js.add_consumer(stream, config)
        return info
    body = {"stream_name": stream, "config": {**config.as_dict(), **fields}}
    # The subject nats-py uses for a durable (and amebus.permissions grants).
    answer = await _request(js, f"CONSUMER.DURABLE.CREATE.{stream}.{config.durable_name}", body)
    created: api.ConsumerInfo = api.ConsumerInfo.from_response(answer)
    return created


async def unpin(js: JetStreamContext, stream: str, durable: str) -> str | None:
    """Unpin the durable's pinned instance: the server picks another one (of those pulling)
    and tells the old one with a 423. Returns the pin id that was cleared (None: none was)."""
    _, fields = await consumer_info(js, stream, durable)
    if _policy(fields) != "pinned_client":
        msg = (f"consumer {durable!r} on stream {stream!r} has priority policy "
               f"{_policy(fields)!r}, so nothing is pinned; unpin needs a standby service "
               f"(standby = True)")
        raise ConfigurationError(msg)
    group = (fields.get("priority_groups") or [GROUP])[0]
    pinned = next((s.get("pinned_client_id") for s in fields["state"]
                   if s.get("group") == group), None)
    await _request(js, f"CONSUMER.UNPIN.{stream}.{durable}", {"group": group})
    log.info("unpinned %s on %s (pin %s)", durable, stream, pinned)
    return pinned or None
