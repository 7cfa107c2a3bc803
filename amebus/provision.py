"""What amebus may change on the server (the ``provision`` setting), where a new durable starts
(``deliver_policy``), the metadata marking a consumer amebus made, and the hint a refused
consumer gets.

Modes of ``provision``:

- ``"update"`` (default): create the stream (with ``stream_subjects``) and the consumer when
  missing, update what drifted, but only on a consumer amebus created (its metadata says so);
- ``"adopt"``: as ``update``, and also rewrite (and mark as amebus's) a consumer made by others;
- ``"verify"``: change nothing; refuse to serve if anything is missing or differs;
- ``"bind"``: change nothing; serve with the server's configuration as it is.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from importlib import metadata as importlib_metadata
from typing import TYPE_CHECKING, Any

from nats.js import api
from nats.js.errors import APIError, NotFoundError

from amebus.errors import ConfigurationError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.routing import ServiceMeta

__all__ = ["MODES", "bind_error_hint", "check_options", "consumer_metadata",
           "deliver_fields", "is_owned", "refuse_foreign"]

MODES = ("update", "adopt", "verify", "bind")
_POLICIES = {"all": api.DeliverPolicy.ALL, "new": api.DeliverPolicy.NEW,
             "last": api.DeliverPolicy.LAST,
             "last_per_subject": api.DeliverPolicy.LAST_PER_SUBJECT}
SERVICE_KEY, VERSION_KEY, ROUTES_KEY = "amebus.service", "amebus.version", "amebus.routes"


def check_options(owner: str, options: Mapping[str, Any]) -> None:
    """Raise ConfigurationError for a bad ``provision`` or ``deliver_policy`` of ``owner``."""
    mode = options.get("provision", "update")
    if mode not in MODES:
        msg = f"{owner}.provision is {mode!r}; use one of {', '.join(map(repr, MODES))}"
        raise ConfigurationError(msg)
    deliver_fields(options.get("deliver_policy", "all"), owner)


def deliver_fields(value: Any, owner: str = "the service") -> dict[str, Any]:
    """The ConsumerConfig fields for ``deliver_policy``: ``"all"``, ``"new"``, ``"last"``,
    ``"last_per_subject"``, a stream sequence (int >= 1) or an aware ``datetime``."""
    if isinstance(value, str) and value in _POLICIES:
        return {"deliver_policy": _POLICIES[value]}
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return {"deliver_policy": api.DeliverPolicy.BY_START_SEQUENCE, "opt_start_seq": value}
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return {"deliver_policy": api.DeliverPolicy.BY_START_TIME, "opt_start_time": value}
    msg = (f"{owner}.deliver_policy is {value!r}; use 'all', 'new', 'last', 'last_per_subject', "
           f"a start sequence (an int >= 1) or a start time (a timezone-aware datetime)")
    raise ConfigurationError(msg)


def _version() -> str:
    try:
        return importlib_metadata.version("amebus")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def consumer_metadata(cls: ServiceMeta) -> dict[str, str]:
    """The metadata amebus puts on a consumer it creates: the service, amebus's version and
    a hash of the route table (patterns and route names, by precedence)."""
    table = "\n".join(f"{route.pattern} {route.name}" for route in cls.routes)
    return {SERVICE_KEY: f"{cls.__module__}.{cls.__qualname__}", VERSION_KEY: _version(),
            ROUTES_KEY: hashlib.sha256(table.encode()).hexdigest()[:16]}


def is_owned(config: api.ConsumerConfig) -> bool:
    """True if amebus created this consumer (the server's ``_nats.*`` keys are ignored)."""
    return SERVICE_KEY in (config.metadata or {})


def merged_metadata(current: api.ConsumerConfig, cls: ServiceMeta) -> dict[str, str]:
    """The consumer's own metadata keys with amebus's refreshed; ``_nats.*`` keys are the
    server's and are left out (it sets them itself)."""
    kept = {k: v for k, v in (current.metadata or {}).items() if not k.startswith("_nats.")}
    return {**kept, **consumer_metadata(cls)}


def refuse_foreign(cls: ServiceMeta, options: Mapping[str, Any], stream: str, durable: str,
                   current: api.ConsumerConfig, changes: list[str]) -> None:
    """In ``update`` mode, refuse to rewrite a consumer amebus did not create."""
    if is_owned(current) or options.get("provision", "update") == "adopt":
        return
    msg = (f"{cls.__name__}: consumer {durable!r} on stream {stream!r} was not created by amebus "
           f"(no {SERVICE_KEY!r} metadata) and differs from the service: {'; '.join(changes)}. "
           f"amebus leaves it as it is: set provision = 'bind' to serve with it unchanged, "
           f"provision = 'adopt' to rewrite it, or match the service's settings to it "
           f"(`amebus plan` shows the difference)")
    raise ConfigurationError(msg)


def bind_error_hint(exc: APIError, cls: ServiceMeta, options: Mapping[str, Any], stream: str,
                    durable: str) -> str:
    """What to do about the server refusing to create or update the consumer, by error code."""
    if exc.err_code == 10116:
        backoff = tuple(options.get("backoff") or ())
        return (f"max_deliver ({options.get('max_deliver')!r}) must exceed the number of "
                f"backoff values ({len(backoff)}: {backoff!r}); raise max_deliver or give "
                f"fewer backoff values")
    if exc.err_code == 10138:
        return (f"the filter subjects {list(cls.filter_subjects)} overlap, which nats-server "
                f"before 2.12 refuses; set server_filter = 'stream' on {cls.__name__} (the "
                f"client skips unrouted subjects) or upgrade nats-server to 2.12 or newer")
    return (f"check that the stream's subjects include every route pattern, or delete the "
            f"consumer (`nats consumer rm {stream} {durable}`)")


async def consumer_or_none(js: JetStreamContext, stream: str, durable: str
                           ) -> api.ConsumerConfig | None:
    """The durable's configuration on the server, None if there is none."""
    try:
        info = await js.consumer_info(stream, durable)
    except NotFoundError:
        return None
    config: api.ConsumerConfig = info.config
    return config
