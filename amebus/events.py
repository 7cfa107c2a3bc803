"""Typed events: attrs classes that know their subject and type name, and publish themselves.

Declarations are checked once, when attrs finishes building the class.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import nats.errors
import nats.js.errors
from cattrs import BaseConverter
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus.codec import default_codec
from amebus.errors import (
    BatchPublishError,
    ConfigurationError,
    NoStreamError,
    PublishError,
    SubjectError,
)
from amebus.subjects import matches, validate_literal, validate_pattern, validate_token

__all__ = [
    "DEFAULT_TIMEOUT",
    "EVENT_TYPE_HEADER",
    "Event",
    "event_pattern",
    "is_event_class",
    "publish_many",
    "subject_of",
]

EVENT_TYPE_HEADER = "Amebus-Event-Type"
"""The header naming the event class of a published message (its ``event_type``)."""
DEFAULT_TIMEOUT = 5.0
"""Seconds ``publish_many`` waits for acks when no timeout is given (nats-py's default)."""

_SPEC = "__amebus_event__"
_ABSTRACT = "__amebus_abstract__"
_CLASS_ATTRIBUTES = ("subject", "subject_pattern", "event_type", "converter")
_BAD_TYPE_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")
_WINDOW = 4096  # publish_many: most acks outstanding at once (nats-py's publish_async: 4000)
_NO_RESPONDERS = "503"


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
    ``event_type`` defaults to ``"module.QualName"`` and is not inherited. A class attribute
    ``converter`` (a cattrs converter) replaces the codec's converter for the class.
    """

    __slots__ = ()
    event_type: ClassVar[str]

    def __init_subclass__(cls, *, abstract: bool | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if abstract is not None:  # attrs's slotted rebuild copies it along and passes None
            setattr(cls, _ABSTRACT, bool(abstract))

    @classmethod
    def __attrs_init_subclass__(cls) -> None:
        if not cls.__dict__.get(_ABSTRACT, False):
            _declare(cls)

    async def publish(self, js: JetStreamContext, *, msg_id: str | None = None,
                      headers: Mapping[str, str] | None = None,
                      timeout: float | None = None) -> PubAck:
        """Publish this event to JetStream and return the server's ack.

        Args:
            js: the JetStream context to publish through.
            msg_id: sets ``Nats-Msg-Id``; the server stores an id once per duplicate window
                and acks a repeat with ``duplicate=True``.
            headers: extra headers; ``Amebus-Event-Type`` is always set by amebus.
            timeout: seconds to wait for the ack; ``None`` uses the context's timeout.

        Raises:
            SubjectError: the computed subject is invalid; nothing was published.
            NoStreamError: no stream captures the subject.
            PublishError: the server did not store the event, or did not answer in time.
        """
        subject, payload, hdrs = _prepare(self, msg_id, headers)
        return await _publish_one(js, subject, payload, hdrs, timeout)


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
    _check_fields(cls)
    static, compute = _subject_kind(cls)
    pattern = _pattern(cls, static)
    if static is None and compute is None and pattern is None:
        msg = (f"{name} has no subject; set a static one (subject = 'order.paid'), compute it "
               f"(def subject(self) -> tuple[str, ...]: return ('order', 'paid', self.id)), "
               f"give only a subject_pattern for an event you receive but never publish, or "
               f"declare a base: class {name}(Event, abstract=True)")
        raise ConfigurationError(msg)
    spec = _Spec(name, static, compute, pattern, _event_type(cls))
    converter = inspect.getattr_static(cls, "converter", None)
    if converter is not None and not isinstance(converter, BaseConverter):
        msg = (f"{name}.converter is {converter!r}; set it to a cattrs converter, "
               f"e.g. amebus.codec.make_converter()")
        raise ConfigurationError(msg)
    setattr(cls, _SPEC, spec)
    setattr(cls, "event_type", spec.event_type)  # noqa: B010 - attrs.has() narrowed cls
    return spec


def _check_fields(cls: type[Any]) -> None:
    fields = attrs.fields_dict(cls)
    for attribute in _CLASS_ATTRIBUTES:
        if attribute in fields:
            field = fields[attribute]
            value = "..." if field.default is attrs.NOTHING else repr(field.default)
            kind = "cattrs.Converter" if attribute == "converter" else "str"
            msg = (f"{cls.__qualname__}.{attribute} is annotated, so attrs made it a field of "
                   f"the payload; write `{attribute}: ClassVar[{kind}] = {value}` or drop the "
                   f"annotation")
            raise ConfigurationError(msg)
    if "publish" in fields:
        msg = (f"{cls.__qualname__} has a field named 'publish', which hides "
               f"Event.publish(); rename the field")
        raise ConfigurationError(msg)


def _subject_kind(cls: type[Any]) -> tuple[str | None, Callable[[Any], object] | None]:
    name = cls.__qualname__
    subject = inspect.getattr_static(cls, "subject", None)
    if isinstance(subject, str):
        try:
            return validate_literal(subject), None
        except SubjectError as err:
            msg = f"{name}.subject is invalid: {err}"
            raise ConfigurationError(msg) from err
    if inspect.isfunction(subject):
        return None, subject
    if isinstance(subject, property) and subject.fget is not None:
        return None, subject.fget
    if subject is None:
        return None, None
    msg = (f"{name}.subject is {subject!r} ({type(subject).__name__}); make it a str "
           f"(subject = 'order.paid') or a method (def subject(self))")
    raise ConfigurationError(msg)


def _pattern(cls: type[Any], static: str | None) -> tuple[str, ...] | None:
    name = cls.__qualname__
    text = inspect.getattr_static(cls, "subject_pattern", None)
    if text is None:
        return None if static is None else tuple(static.split("."))
    if static is not None and "subject_pattern" in cls.__dict__:
        msg = (f"{name} declares both a static subject {static!r} and subject_pattern "
               f"{text!r}; subject_pattern is for a subject() method, a static subject is "
               f"its own pattern: drop subject_pattern")
        raise ConfigurationError(msg)
    try:
        pattern = validate_pattern(text)
    except SubjectError as err:
        msg = f"{name}.subject_pattern is invalid: {err}"
        raise ConfigurationError(msg) from err
    if static is None:
        return pattern
    if not matches(pattern, static.split(".")):
        msg = (f"{name}.subject {static!r} does not match the subject_pattern {text!r} it "
               f"inherits; change the subject or override subject_pattern")
        raise ConfigurationError(msg)
    return tuple(static.split("."))


def _event_type(cls: type[Any]) -> str:
    value = cls.__dict__.get("event_type", f"{cls.__module__}.{cls.__qualname__}")
    if not isinstance(value, str) or not value or _BAD_TYPE_CHARS.search(value):
        msg = (f"{cls.__qualname__}.event_type is {value!r}; it names the class in the "
               f"{EVENT_TYPE_HEADER} header, so give a non-empty str without whitespace, "
               f"like 'orders.paid.v1'")
        raise ConfigurationError(msg)
    return value


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


def _prepare(event: Event, msg_id: str | None,
             headers: Mapping[str, str] | None) -> tuple[str, bytes, dict[str, str]]:
    """Subject, payload and headers of ``event``; raises before anything is sent."""
    spec = _spec_of(type(event))
    subject = spec.static if spec.static is not None else subject_of(event)
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
    return subject, default_codec.encode(event), hdrs


async def _publish_one(js: JetStreamContext, subject: str, payload: bytes,
                       hdrs: dict[str, str], timeout: float | None) -> PubAck:
    _check_size(_connection(js), subject, payload, hdrs)
    try:
        return await js.publish(subject, payload, timeout=timeout, headers=hdrs)
    except nats.js.errors.NoStreamResponseError:
        raise _no_stream(subject) from None
    except nats.errors.TimeoutError:
        wait = "the JetStream context's timeout" if timeout is None else f"{timeout}s"
        msg = (f"no ack for {subject!r} within {wait}; the server may or may not have stored "
               f"it: publish again with the same msg_id to stay idempotent")
        raise PublishError(msg, subject=subject) from None
    except nats.js.errors.APIError as err:
        raise _refused(subject, err.description, err.code, err.err_code) from None
    except (nats.errors.Error, ValueError) as err:
        msg = f"publishing to {subject!r} failed: {err!r}"
        raise PublishError(msg, subject=subject) from err


def _check_size(nc: NATS, subject: str, payload: bytes, hdrs: Mapping[str, str]) -> None:
    """Refuse what the server would refuse: it counts headers too, and answers an oversized
    message with -ERR, on which nats-py closes the connection for good."""
    limit = nc.max_payload
    size = len(payload) + 12 + sum(len(k.strip().encode()) + len(v.strip().encode()) + 4
                                   for k, v in hdrs.items())
    if size > limit:
        msg = (f"the event for {subject!r} is {size} bytes with its headers ({len(payload)} "
               f"of payload), over the server's max_payload of {limit} bytes; nothing was "
               f"sent: make the event smaller or raise max_payload in the server config")
        raise PublishError(msg, subject=subject)


def _no_stream(subject: str) -> NoStreamError:
    msg = (f"no JetStream stream captures the subject {subject!r}, so the event was not stored; "
           f"create a stream whose subjects include it, e.g. {subject.split('.')[0] + '.>'!r}")
    return NoStreamError(msg, subject=subject)


def _refused(subject: str, description: object, code: object, err_code: object) -> PublishError:
    msg = (f"the server did not store the event on {subject!r}: {description} "
           f"(code {code}, err_code {err_code})")
    return PublishError(msg, subject=subject)


def _read_ack(msg: Msg, subject: str) -> PubAck | PublishError:
    if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
        return _no_stream(subject)
    try:
        reply = json.loads(msg.data)
        if "error" in reply:
            error = reply["error"]
            return _refused(subject, error.get("description"), error.get("code"),
                            error.get("err_code"))
        return PubAck.from_response(reply)
    except (ValueError, TypeError, AttributeError):
        text = (f"the reply on {subject!r} is not a JetStream ack: {msg.data[:200]!r}; is a "
                f"core subscriber answering on this subject?")
        return PublishError(text, subject=subject)


def _connection(js: JetStreamContext) -> NATS:
    # nats-py has no public accessor for the connection. Its public publish_async() never
    # resolves the future of a publish the server refuses (2.16: APIError.from_error raises
    # inside the reply callback) and leaks its pending slot, so publish_many pipelines itself.
    return js._nc


class _Batch:
    """Acks of one publish_many call, arriving on the call's own reply inbox."""

    def __init__(self, subjects: list[str], inbox: str) -> None:
        self.subjects = subjects
        self.results: list[PubAck | PublishError | None] = [None] * len(subjects)
        self.cut = len(inbox) + 1
        self.sent = 0
        self.answered = 0
        self.limit = 0
        self.room = asyncio.Event()

    async def on_reply(self, msg: Msg) -> None:
        index = int(msg.subject[self.cut:])
        if self.results[index] is None:
            self.results[index] = _read_ack(msg, self.subjects[index])
            self.answered += 1
            if self.sent - self.answered <= self.limit:
                self.room.set()

    async def until(self, limit: int, timeout: float) -> None:
        """Wait until at most ``limit`` acks are outstanding."""
        if self.sent - self.answered > limit:
            self.limit = limit
            self.room.clear()
            async with asyncio.timeout(timeout):
                await self.room.wait()


async def publish_many(js: JetStreamContext, events: Iterable[Event], *,
                       timeout: float | None = None) -> list[PubAck]:
    """Publish ``events`` pipelined (up to 4096 acks outstanding) and return acks in order.

    Every subject is computed and every payload encoded before the first event is sent.
    The batch is not atomic: on failure the events the server stored stay stored.

    Args:
        js: the JetStream context to publish through.
        events: the events, published in this order.
        timeout: seconds to wait whenever acks are awaited (default ``DEFAULT_TIMEOUT``).

    Raises:
        SubjectError: an event's subject is invalid; nothing was published.
        PublishError: an event is over the server's max_payload; nothing was published.
        BatchPublishError: some events were not stored; ``acks`` holds one ack or ``None``
            per event, ``failures`` maps the index of each failed event to its error.
    """
    items = []
    nc = _connection(js)
    for index, event in enumerate(events):
        try:
            item = _prepare(event, None, None)
            _check_size(nc, *item)
        except SubjectError as err:
            msg = f"events[{index}]: {err}; nothing was published"
            raise SubjectError(msg) from None
        except PublishError as err:  # too large: the server would close the connection
            msg = f"events[{index}]: {err}; nothing of the batch was published"
            raise PublishError(msg, subject=err.subject) from None
        items.append(item)
    wait = DEFAULT_TIMEOUT if timeout is None else timeout
    if len(items) <= 1:  # a handler's single result: skip the batch's own reply subscription
        try:
            return [await _publish_one(js, *items[0], wait)] if items else []
        except PublishError as err:
            raise _batch_error([None], {0: err}) from None
    inbox = nc.new_inbox()
    batch = _Batch([subject for subject, _, _ in items], inbox)
    try:
        sub = await nc.subscribe(f"{inbox}.*", cb=batch.on_reply)
    except nats.errors.Error as err:
        return _acks_or_raise(batch, f"the connection failed ({err!r})")
    reason = ""
    try:
        for index, (subject, payload, hdrs) in enumerate(items):
            if batch.sent - batch.answered >= _WINDOW:
                await batch.until(_WINDOW // 2, wait)
            await nc.publish(subject, payload, reply=f"{inbox}.{index}", headers=hdrs)
            batch.sent += 1
        await batch.until(0, wait)
    except TimeoutError:
        reason = f"no ack within {wait}s; the server may or may not have stored it"
    except nats.errors.Error as err:
        reason = f"the connection failed ({err!r})"
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return _acks_or_raise(batch, reason)


def _acks_or_raise(batch: _Batch, reason: str) -> list[PubAck]:
    acks: list[PubAck | None] = []
    failures: dict[int, PublishError] = {}
    for index, result in enumerate(batch.results):
        if isinstance(result, PubAck):
            acks.append(result)
            continue
        acks.append(None)
        subject = batch.subjects[index]
        if result is None:
            why = reason if index < batch.sent else f"not sent, after: {reason}"
            result = PublishError(f"{subject!r}: {why}", subject=subject)
        failures[index] = result
    if not failures:
        return acks  # type: ignore[return-value]  # no None left
    raise _batch_error(acks, failures)


def _batch_error(acks: list[PubAck | None], failures: dict[int, PublishError]
                 ) -> BatchPublishError:
    listed = "; ".join(f"events[{index}] {error}" for index, error in list(failures.items())[:5])
    more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
    msg = (f"{len(failures)} of {len(acks)} events were not stored: {listed}{more}. The others "
           f"were stored (their acks are on .acks); republish only .failures, with msg ids if "
           f"a retry must not duplicate")
    return BatchPublishError(msg, acks=acks, failures=failures)
