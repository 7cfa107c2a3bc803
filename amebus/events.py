"""Typed events: attrs classes that know their subject and type name, and publish themselves.

Declarations are checked once, when attrs finishes building the class. ``Event.encode`` is
the public encoding step (subject, strictly checked payload, headers); the sending is in
:mod:`amebus.publish`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
from cattrs import BaseConverter
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus._declaration import (
    EVENT_TYPE_HEADER,
    check_annotations,
    check_fields,
    event_type_of,
    pattern_of,
    subject_kind,
)
from amebus.codec import default_codec
from amebus.errors import ConfigurationError, SubjectError
from amebus.subjects import matches, validate_literal, validate_token

__all__ = [
    "EVENT_TYPE_HEADER",
    "Event",
    "Outgoing",
    "event_pattern",
    "is_event_class",
    "subject_of",
]

_SPEC = "__amebus_event__"
_ABSTRACT = "__amebus_abstract__"


@attrs.frozen
class Outgoing:
    """What publishing an event sends: its subject, JSON payload and headers."""

    subject: str
    payload: bytes
    headers: dict[str, str]


@attrs.frozen
class _Spec:
    name: str
    static: str | None
    compute: Callable[[Any], object] | None
    pattern: tuple[str, ...] | None
    event_type: str


class Event:
    """Base of typed events: subclass it with an attrs class.

    ::

        @attrs.frozen
        class OrderPaid(Event):
            subject = "order.paid"            # static; or subject: ClassVar[str] = "order.paid"
            order_id: str

        @attrs.frozen
        class OrderShipped(Event):
            subject_pattern = "order.shipped.*"         # optional: what subject() must match
            event_type = "orders.shipped.v1"            # optional wire name of the class
            order_id: str

            def subject(self) -> tuple[str, ...]:       # each token is validated on its own
                return ("order", "shipped", self.order_id)

        class OrderEvent(Event, abstract=True):         # a base with no subject of its own
            ...

    ``subject()`` may also return a str, validated as a whole: prefer tokens, since
    ``f"order.shipped.{order_id}"`` with ``order_id="1.2"`` is a valid, wrong subject.
    A class with only a ``subject_pattern`` is received but never published.
    ``event_type`` defaults to the class's qualified name (``"OrderShipped"``, the same
    whatever module path it is imported or run under) and is not inherited. A class attribute
    ``converter`` (a cattrs converter) replaces the codec's converter for the class.
    """

    __slots__ = ()
    event_type: ClassVar[str]

    def __init_subclass__(cls, *, abstract: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        check_annotations(cls)  # before @attrs.frozen, which may fail first on field order
        if abstract is not None:  # attrs's slotted rebuild copies it along and passes None
            setattr(cls, _ABSTRACT, bool(abstract))

    @classmethod
    def __attrs_init_subclass__(cls) -> None:
        if not cls.__dict__.get(_ABSTRACT, False):
            _declare(cls)

    def encode(self, *, msg_id: str | None = None,
               headers: Mapping[str, str] | None = None) -> Outgoing:
        """Return the subject, payload and headers publishing this event sends.

        The payload is checked as strictly as a consumer decodes it, so what one amebus
        service publishes another accepts. Raises ``SubjectError`` for an invalid subject,
        ``TypeError`` for a field whose value a consumer would refuse (naming the field), and
        ``ValueError`` for headers that conflict with ``Amebus-Event-Type`` or ``msg_id``.
        """
        spec = _spec_of(type(self))
        subject = spec.static if spec.static is not None else subject_of(self)
        hdrs = {EVENT_TYPE_HEADER: spec.event_type}
        if headers:
            hdrs = {**headers, **hdrs}
            if headers.get(EVENT_TYPE_HEADER, spec.event_type) != spec.event_type:
                msg = (f"headers[{EVENT_TYPE_HEADER!r}] is {headers[EVENT_TYPE_HEADER]!r}, but "
                       f"{spec.name} is {spec.event_type!r}; amebus sets this header, drop it")
                raise ValueError(msg)
        if msg_id is not None:
            if hdrs.get(Header.MSG_ID, msg_id) != msg_id:
                msg = (f"msg_id {msg_id!r} conflicts with headers[{Header.MSG_ID.value!r}] "
                       f"{hdrs[Header.MSG_ID]!r}; give one of them")
                raise ValueError(msg)
            hdrs[Header.MSG_ID] = msg_id
        return Outgoing(subject, default_codec.encode(self, check=True), hdrs)

    async def publish(self, js: JetStreamContext, *, msg_id: str | None = None,
                      headers: Mapping[str, str] | None = None, timeout: float | None = None,
                      **options: Any) -> PubAck:
        """Publish this event to JetStream and return the server's ack.

        Args:
            js: the JetStream context to publish through.
            msg_id: sets ``Nats-Msg-Id``; the server stores an id once per duplicate window
                and acks a repeat with ``duplicate=True``.
            headers: extra headers; ``Amebus-Event-Type`` is always set by amebus.
            timeout: seconds to wait for the ack; ``None`` uses the context's timeout.
            options: ``ttl``, ``expected_last_subject_sequence``, ``expected_last_sequence``,
                ``expected_stream``, ``at``, ``delay``, ``every``, ``cron``, ``time_zone``,
                ``schedule_subject``: see :func:`amebus.publish.publish`.

        Raises:
            SubjectError: the computed subject is invalid; nothing was published.
            NoStreamError: no stream captures the subject.
            SequenceConflictError: an expected sequence did not match; nothing was stored.
            StreamSettingError: the stream does not allow the TTL or schedule asked for.
            PublishError: the server did not store the event, or did not answer in time.
        """
        from amebus.publish import publish  # amebus.publish imports this module

        return await publish(js, self, msg_id=msg_id, headers=headers, timeout=timeout,
                             **options)


def _declare(cls: type[Any]) -> _Spec:
    """Check the declaration of an event class, store and return its spec."""
    name = cls.__qualname__
    if cls is Event or not issubclass(cls, Event):
        msg = f"{cls!r} is not an Event subclass; declare @attrs.frozen class {name}(Event)"
        raise ConfigurationError(msg)
    if cls.__dict__.get(_ABSTRACT, False):
        msg = (f"{name} is abstract (declared with abstract=True); use one of its concrete "
               f"subclasses")
        raise ConfigurationError(msg)
    if not attrs.has(cls):
        msg = f"{name} is not an attrs class; decorate it with @attrs.frozen"
        raise ConfigurationError(msg)
    check_fields(cls)
    static, compute = subject_kind(cls)
    pattern = pattern_of(cls, static)
    if static is None and compute is None and pattern is None:
        msg = (f"{name} has no subject; set a static one (subject = 'order.paid'), compute it "
               f"(def subject(self) -> tuple[str, ...]: return ('order', 'paid', self.id)), "
               f"give only a subject_pattern for an event you receive but never publish, or "
               f"declare a base: class {name}(Event, abstract=True)")
        raise ConfigurationError(msg)
    spec = _Spec(name, static, compute, pattern, event_type_of(cls))
    converter = inspect.getattr_static(cls, "converter", None)
    if converter is not None and not isinstance(converter, BaseConverter):
        msg = (f"{name}.converter is {converter!r}; set it to a cattrs converter, "
               f"e.g. amebus.codec.make_converter()")
        raise ConfigurationError(msg)
    setattr(cls, _SPEC, spec)
    setattr(cls, "event_type", spec.event_type)  # noqa: B010 - attrs.has() narrowed cls
    return spec


def _spec_of(cls: type[Any]) -> _Spec:
    spec: _Spec | None = cls.__dict__.get(_SPEC)
    return _declare(cls) if spec is None else spec


def is_event_class(obj: object) -> bool:
    """True if ``obj`` is a concrete, correctly declared Event class."""
    if not (isinstance(obj, type) and issubclass(obj, Event)):
        return False
    try:
        _spec_of(obj)
    except ConfigurationError:
        return False
    return True


def event_pattern(cls: type[Event]) -> tuple[str, ...] | None:
    """The tokens every subject of ``cls`` matches: its static subject, or its subject_pattern.

    ``None`` for a computed subject without a ``subject_pattern``.

    >>> event_pattern(OrderShipped)
    ('order', 'shipped', '*')
    """
    return _spec_of(cls).pattern


def subject_of(event: Event) -> str:
    """The subject ``event`` publishes to; raises ``SubjectError`` for an invalid one."""
    spec = _spec_of(type(event))
    if spec.static is not None:
        return spec.static
    if spec.compute is None:
        msg = (f"{spec.name} declares only subject_pattern {'.'.join(spec.pattern or ())!r}, so "
               f"it can be received but not published; add def subject(self) returning tokens "
               f"that match the pattern")
        raise ConfigurationError(msg)
    value = spec.compute(event)
    where = f"{spec.name}.subject()"
    if isinstance(value, str):
        try:
            subject = validate_literal(value)
        except SubjectError as err:
            msg = f"{where} returned an invalid subject: {err}"
            raise SubjectError(msg) from None
    elif isinstance(value, Sequence) and not isinstance(value, bytes) and value:
        for index, token in enumerate(value):
            try:
                validate_token(token)
            except SubjectError as err:
                msg = f"{where} returned token {index} of {list(value)!r}: {err}"
                raise SubjectError(msg) from None
        subject = ".".join(value)
    else:
        msg = (f"{where} returned {value!r} ({type(value).__name__}); return a non-empty "
               f"sequence of str tokens, like ('order', 'paid', self.order_id)")
        raise SubjectError(msg)
    if spec.pattern is not None and not matches(spec.pattern, subject.split(".")):
        msg = (f"{where} gave {subject!r}, which does not match its subject_pattern "
               f"{'.'.join(spec.pattern)!r}; fix subject() or the pattern")
        raise SubjectError(msg)
    return subject
