"""``amebus plan``: the stream and consumer configuration a service wants beside the
server's, field by field, marking what amebus would update and what the server cannot change
in place; and what serving would do under the service's ``provision`` mode."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs
from nats.js import api
from nats.js.errors import NotFoundError

from amebus.consumer_config import consumer_config, server_filters
from amebus.errors import ConfigurationError
from amebus.priority import consumer_info, priority_drift, priority_fields
from amebus.provision import SERVICE_KEY, VERSION_KEY, consumer_or_none, is_owned
from amebus.routing import durable_name

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.routing import ServiceMeta

__all__ = ["Plan", "Row", "bind_as_is", "plan_service"]

# The bind-mode warning was written by amebus.provision before it moved here; it keeps
# that logger name so logging configurations that name it still see it.
log = logging.getLogger("amebus.provision")

# kind: "update" (amebus updates it in place), "fixed" (the server refuses a change: delete and
# recreate), "start" (where a new durable starts: applies to a new consumer only), "kept"
# (amebus does not manage it and keeps what the server has).
_CONSUMER_FIELDS = (("ack_policy", "fixed"), ("deliver_policy", "start"),
                    ("opt_start_seq", "start"), ("opt_start_time", "start"),
                    ("replay_policy", "fixed"), ("max_waiting", "kept"), ("mem_storage", "kept"),
                    ("ack_wait", "update"), ("max_deliver", "update"),
                    ("max_ack_pending", "update"), ("filter_subjects", "update"))
_NOTE = {"update": "update in place", "fixed": "cannot change in place: delete and recreate",
         "start": "applies to a new durable only", "kept": ""}


@attrs.frozen
class Row:
    """One field: what the server has, what the service wants, and how it could change."""

    scope: str
    field: str
    server: Any
    wanted: Any
    kind: str

    @property
    def differs(self) -> bool:
        return self.kind != "kept" and self.server != self.wanted

    @property
    def drifted(self) -> bool:
        """Differs in a way ``verify`` refuses (where a new durable starts does not count)."""
        return self.differs and self.kind in ("update", "fixed")

    def describe(self) -> str:
        return f"{self.scope} {self.field} is {self.server!r}, the service wants {self.wanted!r}"


@attrs.frozen
class Plan:
    """The comparison ``amebus plan`` prints (:meth:`render`)."""

    service: str
    mode: str
    stream: str
    durable: str
    stream_exists: bool
    consumer: api.ConsumerConfig | None
    rows: tuple[Row, ...]

    @property
    def missing(self) -> str:
        """What does not exist yet ("" if both do)."""
        if not self.stream_exists:
            return f"stream {self.stream!r} does not exist"
        return "" if self.consumer is not None else (
            f"consumer {self.durable!r} on stream {self.stream!r} does not exist")

    def outcome(self) -> tuple[bool, str]:
        """(would serve, what serving under ``mode`` would do)."""
        fixed = [r.field for r in self.rows if r.differs and r.kind == "fixed"]
        update = [r.field for r in self.rows if r.differs and r.kind == "update"]
        if self.mode in ("verify", "bind") and self.missing:
            return False, (f"refuse to serve: {self.missing} and provision {self.mode!r} "
                           f"creates nothing")
        if self.mode == "verify" and (fixed or update):
            return False, f"refuse to serve: {', '.join(fixed + update)} differ"
        if self.mode == "bind":
            return True, "serve with the server's configuration as it is (change nothing)"
        if self.missing:
            return True, f"create what is missing ({self.missing})"
        if fixed:
            return False, (f"refuse to serve: {', '.join(fixed)} cannot change in place; delete "
                           f"the consumer (`nats consumer rm {self.stream} {self.durable}`)")
        if update and self.consumer is not None and not is_owned(self.consumer) and (
                self.mode != "adopt"):
            return False, (f"refuse to serve: the consumer was not created by amebus and "
                           f"{', '.join(update)} differ; provision 'bind' serves with it as "
                           f"it is, 'adopt' rewrites it")
        if update:
            return True, f"update {', '.join(update)} in place"
        return True, "serve; nothing to change"

    def render(self) -> str:
        """The plan as text: ``~`` would update, ``!`` cannot update in place, ``?`` applies to
        a new durable only, ``+`` would be created, ``=`` the same (or not amebus's)."""
        lines = [f"plan for {self.service} (provision {self.mode!r})"]
        state = "exists" if self.stream_exists else "missing"
        lines.append(f"stream {self.stream}: {state}")
        lines += self._table([r for r in self.rows if r.scope == "stream"])
        if self.consumer is None:
            state = "missing"
        elif is_owned(self.consumer):
            meta = self.consumer.metadata or {}
            state = (f"exists, created by amebus (service {meta.get(SERVICE_KEY)}, amebus "
                     f"{meta.get(VERSION_KEY)})")
        else:
            state = "exists, not created by amebus"
        lines.append(f"consumer {self.stream} > {self.durable}: {state}")
        lines += self._table([r for r in self.rows if r.scope == "consumer"])
        outcome = self.outcome()[1]
        lines.append(f"on serve: {outcome}")
        return "\n".join(lines)

    def _table(self, rows: list[Row]) -> list[str]:
        cells = [("", "FIELD", "SERVER", "WANTED", "")]
        for row in rows:
            if row.server is None and row.wanted is None:
                continue
            missing = (row.scope == "stream" and not self.stream_exists) or (
                row.scope == "consumer" and self.consumer is None)
            mark = "+" if missing else "=" if not row.differs else {
                "update": "~", "fixed": "!", "start": "?"}[row.kind]
            server = "-" if missing else _show(row.server)
            note = "" if mark in ("=", "+") else _NOTE[row.kind]
            cells.append((mark, row.field, server, _show(row.wanted), note))
        widths = [max(len(c[i]) for c in cells) for i in range(4)]
        return [("  " + "  ".join(c.ljust(w) for c, w in zip(line, [*widths, 0], strict=True))
                 ).rstrip() for line in cells]


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


def _priority(fields: Mapping[str, Any], field: str) -> Any:
    """A priority field as the plan shows it (None: no policy; the timeout in seconds)."""
    policy = fields.get("priority_policy") if fields.get("priority_groups") else None
    if field == "priority_policy" or policy != "pinned_client":
        return policy if field == "priority_policy" and policy != "none" else None
    return (fields.get("priority_timeout") or 0) / 1e9


def _value(config: api.ConsumerConfig, field: str) -> Any:
    if field == "filter_subjects":
        subjects = list(config.filter_subjects or []) or (
            [config.filter_subject] if config.filter_subject else [])
        return sorted(subjects) or None
    value = getattr(config, field)
    if field == "mem_storage" and not value:
        return None
    return getattr(value, "value", value)


async def plan_service(js: JetStreamContext, cls: ServiceMeta, options: Mapping[str, Any]
                       ) -> Plan:
    """Compare the service (with ``options``: the serve() options) with the server."""
    stream = options["stream"]
    durable = durable_name(cls, options["durable"])
    try:
        stream_config: api.StreamConfig | None = (await js.stream_info(stream)).config
    except NotFoundError:
        stream_config = None
    rows: list[Row] = []
    wanted_subjects = list(options.get("stream_subjects") or [])
    if wanted_subjects or stream_config is not None:
        have = list(stream_config.subjects or []) if stream_config is not None else []
        wanted = have + [s for s in wanted_subjects if s not in have]
        rows.append(Row("stream", "subjects", have or None, wanted or None, "update"))
    basis = stream_config or api.StreamConfig(name=stream, subjects=wanted_subjects)
    filters = server_filters(cls, options["server_filter"], basis)
    wanted_config = consumer_config(cls, options, durable, filters)
    current = await consumer_or_none(js, stream, durable) if stream_config else None
    for field, kind in _CONSUMER_FIELDS:
        server = _value(current, field) if current is not None else None
        want = _value(wanted_config, field) if kind != "kept" else server
        rows.append(Row("consumer", field, server, want, kind))
    holds = (await consumer_info(js, stream, durable))[1] if current is not None else {}
    for field, kind in (("priority_policy", "fixed"), ("priority_timeout", "update")):
        rows.append(Row("consumer", field, _priority(holds, field),
                        _priority(priority_fields(options), field), kind))
    return Plan(service=f"{cls.__module__}.{cls.__qualname__}",
                mode=options.get("provision", "update"), stream=stream, durable=durable,
                stream_exists=stream_config is not None, consumer=current, rows=tuple(rows))


async def bind_as_is(js: JetStreamContext, cls: ServiceMeta, options: Mapping[str, Any],
                     stream: str, durable: str
                     ) -> tuple[str, str, bool, api.ConsumerConfig, tuple[list[str], int]]:
    """Bind in ``verify`` or ``bind`` mode: change nothing; ``verify`` refuses any drift.

    Returns what :func:`amebus.binding.bind_consumer` returns (it calls this); routes
    added since the durable last ran are not replayed (nothing on the server is created in
    these modes).
    """
    mode = options.get("provision", "update")
    found = await plan_service(js, cls, options)
    if found.missing:
        msg = (f"{cls.__name__}: {found.missing}; provision = {mode!r} creates nothing: create "
               f"it (see `amebus plan`) or serve with provision = 'update'")
        raise ConfigurationError(msg)
    if found.consumer is not None:  # pulls without the group (or with it) fail: refused
        priority_drift(cls.__name__, stream, durable,
                       (await consumer_info(js, stream, durable))[1], priority_fields(options))
    drift = [row.describe() for row in found.rows if row.drifted]
    if drift and mode == "verify":
        msg = (f"{cls.__name__}: provision = 'verify' and the server's configuration differs: "
               f"{'; '.join(drift)}; change the infrastructure code that made it (or the "
               f"service's settings), `amebus plan` shows the whole difference")
        raise ConfigurationError(msg)
    if drift:
        log.warning("%s: serving with consumer %s on %s as the server has it (provision "
                    "'bind'): %s", cls.__name__, durable, stream, "; ".join(drift))
    assert found.consumer is not None  # not missing
    consumer = found.consumer
    return (stream, durable, bool(consumer.filter_subject or consumer.filter_subjects), consumer,
            ([], 0))
