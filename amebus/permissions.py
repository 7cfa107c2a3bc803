"""The least NATS permissions a service needs, from its class and options (``amebus permissions``).

Every subject below is one amebus itself touches, found by reading the code (nats-py 2.16.0
builds the JetStream API subjects: ``js.add_consumer`` with a durable name and no ``name``
requests ``CONSUMER.DURABLE.CREATE.<stream>.<durable>``, ``kv.get`` on a bucket with direct
get requests ``DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>``, replies come on the client's
inbox prefix). No grant is ``>`` on ``$JS.API``.

- always: pull (``CONSUMER.MSG.NEXT``) and settle (``$JS.ACK``) on the durable, read its info
  (bind, lag, the pull engine's health check), read the stream's info, look for an
  interrupted catch-up durable, and receive replies on the service's own inbox;
- ``provision`` ``update``/``adopt`` (the modes that create): create/update the stream and
  the durable, and the catch-up durable of added routes;
- ``max_deliver > 0``: the ``amebus_attempts`` key-value bucket, only this durable's keys;
- a ``dead_letter_subject``: publish to it, find the stream capturing it, the gave-up
  backstop stream over the durable's ``MAX_DELIVERIES`` advisories, and
  ``dead_letter_stream`` when amebus creates it;
- result events: the subjects of the events the handlers' return annotations name, plus
  ``publishes=[...]``;
- discovery: the ``$SRV`` subjects of the service's name and replies to the requesters
  (``allow_responses``).

The lists and their renderings are in :mod:`amebus.grants`; the sentences for missing
rights are in :mod:`amebus._violations`. A wave feature adding
subjects (schedules, idempotency buckets, ...) adds its grants in
:func:`_extra_grants` (features with subjects of their own: idempotent routes).
"""

from __future__ import annotations

import typing
from collections.abc import Iterable
from typing import Any, Literal

from amebus.errors import ConfigurationError
from amebus.grants import Grant, Permissions, inbox_prefix

__all__ = ["Grant", "Permissions", "explain_violation", "inbox_prefix", "permissions"]


def permissions(service: type[Any], *, discovery: str | bool | None = None,
                publishes: Iterable[str] = (), api_prefix: str = "$JS.API",
                role: Literal["service", "operator"] = "service",
                **options: Any) -> Permissions:
    """The least permissions ``service`` needs as configured (``options``: serve() overrides).

    Args:
        service: the Service class.
        discovery: the ``$SRV`` name it answers as (True: the class name); None: on if the
            class's observer includes a Discovery.
        publishes: more subjects its handlers publish to (events the return annotations do
            not name, publishes of your own).
        api_prefix: the JetStream API prefix.
        role: ``"operator"``: the rights of the ``amebus`` operator commands (plan, status,
            pause/resume, reset, dlq) on this service instead of the service's own.

    Raises:
        ConfigurationError: no stream, or an unknown option.
    """
    from amebus.provision import check_options
    from amebus.routing import durable_name
    from amebus.serving import SERVE_OPTIONS, settings_of

    unknown = sorted(set(options) - set(SERVE_OPTIONS))
    if unknown:
        msg = f"permissions(): unknown option(s) {unknown!r}; use serve()'s option names"
        raise ConfigurationError(msg)
    option = {name: options.get(name, getattr(service, name)) for name in SERVE_OPTIONS}
    name = service.__name__
    stream = option["stream"]
    if not stream:
        msg = f"{name} has no stream; set it on the class or pass stream='ORDERS'"
        raise ConfigurationError(msg)
    durable = durable_name(service, option["durable"])
    check_options(name, option)
    settings = settings_of(service, {k: v for k, v in options.items() if k in option})
    creates = option["provision"] in ("update", "adopt")
    api = api_prefix
    target = f"{service.__module__}:{service.__qualname__}"
    if role == "operator":
        from amebus._permissions_ops import OPERATOR_INBOX, operator_grants

        named = discovery if isinstance(discovery, str) else None
        ops, ops_notes = operator_grants(service, {**option, "dead_letter_subject":
                                                   settings.dead_letter_subject}, api, named)
        return Permissions(service=f"{name}_operator", grants=tuple(ops),
                           allow_responses=False, inbox_prefix=OPERATOR_INBOX,
                           notes=tuple(ops_notes), target=target)
    inbox = inbox_prefix(service)
    grants: list[Grant] = []

    def pub(subject: str, why: str) -> None:
        grants.append(Grant("publish", subject, why))

    pub(f"{api}.CONSUMER.MSG.NEXT.{stream}.{durable}", "to pull messages")
    pub(f"$JS.ACK.{stream}.{durable}.>", "to acknowledge messages (ack, nak, term, progress)")
    pub(f"{api}.CONSUMER.INFO.{stream}.{durable}",
        "to read the durable's info (bind, lag, health)")
    pub(f"{api}.STREAM.INFO.{stream}", "to read the stream's info")
    pub(f"{api}.CONSUMER.INFO.{stream}.{durable}_catchup",
        "to find an interrupted replay of added routes")
    if creates:
        pub(f"{api}.STREAM.CREATE.{stream}", "to create the stream (provision update/adopt)")
        pub(f"{api}.STREAM.UPDATE.{stream}", "to add subjects to the stream (provision "
            "update/adopt)")
        pub(f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{durable}",
            "to create or update the durable (provision update/adopt)")
        catchup = f"{durable}_catchup"
        pub(f"{api}.CONSUMER.DURABLE.CREATE.{stream}.{catchup}", "to replay added routes")
        pub(f"{api}.CONSUMER.MSG.NEXT.{stream}.{catchup}", "to replay added routes")
        pub(f"$JS.ACK.{stream}.{catchup}.>", "to replay added routes")
        pub(f"{api}.CONSUMER.DELETE.{stream}.{catchup}", "to finish a replay of added routes")
        if option["new_routes"] == "skip":
            pub(f"{api}.CONSUMER.CREATE.{stream}", "to count skipped messages of added routes")
            pub(f"{api}.CONSUMER.DELETE.{stream}.*", "to count skipped messages of added routes")
    if option["standby"]:
        pub(f"{api}.CONSUMER.UNPIN.{stream}.{durable}",
            "to hand the pin to a standby at once when it stops (standby)")
    if settings.max_deliver > 0:
        grants.extend(_attempt_grants(api, stream, durable, creates))
    if settings.dead_letter_subject is not None:
        grants.extend(_dead_letter_grants(api, stream, durable, settings.dead_letter_subject,
                                          option["dead_letter_stream"]))
    for subject in dict.fromkeys([*_returned_subjects(service), *publishes]):
        pub(subject, "to publish result events")
    grants.extend(_extra_grants(service, api, creates))
    grants.append(Grant("subscribe", f"{inbox}.>", "to receive replies (private inbox)"))
    responds = _discovery_grants(service, discovery, grants)
    notes = () if _returned_known(service) else (
        "a handler's return annotation does not tell the subjects it may publish (none, Any, "
        "or an event with a computed subject and no subject_pattern): add them with "
        "publishes=[...] / --publish",)
    return Permissions(service=name, grants=tuple(grants), allow_responses=responds,
                       inbox_prefix=inbox, notes=notes,
                       target=target)


def _attempt_grants(api: str, stream: str, durable: str, creates: bool) -> list[Grant]:
    from amebus.attempts import BUCKET, key_token

    keys = f"$KV.{BUCKET}.{key_token(stream)}.{key_token(durable)}.>"
    why = "to count handler attempts (bucket amebus_attempts)"
    grants = [Grant("publish", f"{api}.STREAM.INFO.KV_{BUCKET}", why),
              Grant("publish", keys, why),
              Grant("publish", f"{api}.DIRECT.GET.KV_{BUCKET}.{keys}", why)]
    if creates:
        grants.insert(1, Grant("publish", f"{api}.STREAM.CREATE.KV_{BUCKET}",
                               "to create the bucket amebus_attempts"))
    return grants


def _dead_letter_grants(api: str, stream: str, durable: str, subject: str,
                        create: str | None) -> list[Grant]:
    from amebus.gaveup import DURABLE, advisory_stream

    grants = [Grant("publish", subject, "to publish dead letters"),
              Grant("publish", f"{api}.STREAM.NAMES", "to find the dead-letter stream")]
    if create is not None:
        why = "to create the dead_letter_stream"
        grants += [Grant("publish", f"{api}.STREAM.INFO.{create}", why),
                   Grant("publish", f"{api}.STREAM.CREATE.{create}", why),
                   Grant("publish", f"{api}.STREAM.UPDATE.{create}", why)]
    gave_up = advisory_stream(stream, durable)
    why = "to dead-letter messages the server gave up on (MAX_DELIVERIES)"
    grants += [Grant("publish", f"{api}.STREAM.INFO.{gave_up}", why),
               Grant("publish", f"{api}.STREAM.CREATE.{gave_up}", why),
               Grant("publish", f"{api}.CONSUMER.DURABLE.CREATE.{gave_up}.{DURABLE}", why),
               Grant("publish", f"{api}.CONSUMER.MSG.NEXT.{gave_up}.{DURABLE}", why),
               Grant("publish", f"$JS.ACK.{gave_up}.{DURABLE}.>", why),
               Grant("publish", f"{api}.STREAM.MSG.GET.{stream}", why)]
    return grants


def _discovery_grants(service: type[Any], discovery: str | bool | None,
                      grants: list[Grant]) -> bool:
    """Add the ``$SRV`` subscriptions; True if the service answers requests (discovery)."""
    if discovery is None:
        from amebus.telemetry.discovery import Discovery
        from amebus.telemetry.observer import Observers

        observer = getattr(service, "observer", None)
        found = [observer, *observer.observers] if isinstance(
            observer, Observers) else [observer]
        named = [o for o in found if isinstance(o, Discovery)]
        discovery = (named[0].name or True) if named else False
    if discovery is False:
        return False
    name = service.__name__ if discovery is True else discovery
    why = "to answer service discovery ($SRV.PING/INFO/STATS)"
    for subject in ("$SRV.*", f"$SRV.*.{name}", f"$SRV.*.{name}.*"):
        grants.append(Grant("subscribe", subject, why))
    return True


def _extra_grants(service: type[Any], api: str, creates: bool) -> list[Grant]:
    """The subjects of features that add their own: the key-value bucket of each idempotent
    route (``amebus.once``: looked up, created on first use, read and written under the
    route's own key prefix). Schedules, TTL and atomic batches publish on the event subjects,
    which the result-event grants cover."""
    from amebus.once import route_key_prefix

    grants: list[Grant] = []
    for route in service.routes:
        idempotent = route.route.idempotent
        if idempotent is None:
            continue
        bucket = idempotent.bucket
        why = f"to remember what idempotent route {route.name} handled (bucket {bucket})"
        keys = f"$KV.{bucket}.{route_key_prefix(route.name)}.>"
        grants += [Grant("publish", f"{api}.STREAM.INFO.KV_{bucket}", why),
                   Grant("publish", keys, why),
                   Grant("publish", f"{api}.DIRECT.GET.KV_{bucket}.{keys}", why)]
        if creates:
            grants.append(Grant("publish", f"{api}.STREAM.CREATE.KV_{bucket}",
                                f"to create the bucket {bucket}"))
    return list({(g.direction, g.subject): g for g in grants}.values())


def _return_hints(service: type[Any]) -> list[Any]:
    hints: list[Any] = []
    for route in service.routes:
        func = getattr(route.handler, "process", route.handler)
        try:
            hints.append(typing.get_type_hints(func).get("return", Any))
        except Exception:  # unresolvable annotations: unknown
            hints.append(Any)
    return hints


def _events_in(hint: Any) -> tuple[list[type[Any]], bool]:
    """The Event classes ``hint`` names, and whether it is fully known (no ``Any``)."""
    from amebus.events import is_event_class

    if hint is None or hint is type(None):
        return [], True
    if is_event_class(hint):
        return [hint], True
    args = typing.get_args(hint)
    if not args:
        return [], hint is not Any and isinstance(hint, type) and not is_event_class(hint)
    found: list[type[Any]] = []
    known = True
    for arg in args:
        if arg is Ellipsis:
            continue
        events, ok = _events_in(arg)
        found += events
        known = known and ok
    return found, known


def _returned_subjects(service: type[Any]) -> list[str]:
    from amebus.events import event_pattern

    subjects: list[str] = []
    for hint in _return_hints(service):
        for event in _events_in(hint)[0]:
            pattern = event_pattern(event)
            if pattern is not None:
                subjects.append(".".join(pattern))
    return subjects


def _returned_known(service: type[Any]) -> bool:
    """True if every handler's return annotation names only events of a known subject."""
    from amebus.events import event_pattern

    found = [_events_in(hint) for hint in _return_hints(service)]
    return all(known and all(event_pattern(e) is not None for e in events)
               for events, known in found)


def explain_violation(message: str, found: Permissions, target: str | None = None
                      ) -> str | None:
    """One sentence for a Permissions Violation ``message`` on a subject of ``found`` (naming
    the grant, why amebus needs it, and the line to add); None for another error."""
    from amebus._violations import explain_violation as explain

    return explain(message, found, target)
