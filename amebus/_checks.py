"""Type and range checks of configuration values and ``Nak`` delays, run when a class is
created or ``serve()`` is called: every message quotes the value and says what to give.

The settings' fields (:class:`amebus.consumer.Settings`) use the attrs validators here; the
serve options that are not settings are checked by :func:`check_options`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from amebus.errors import MAX_DELAY, SubjectError, check_delay
from amebus.subjects import validate_literal, validate_pattern

__all__ = ["ACK_WAIT_MAX", "check_options", "delays", "integer", "optional_seconds", "seconds",
           "subject"]

ACK_WAIT_MAX = MAX_DELAY
"""The server keeps ``ack_wait`` as int64 nanoseconds too."""

_NAME_CHARS = ">*. /\\\t\r\n"  # nats-py 2.16's _INVALID_NAME_CHARS (nats.go's rule too)
_MAX_NAME = 255


def _number(name: str, value: object, fix: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        msg = f"{name} is {value!r} ({type(value).__name__}); {fix}"
        raise TypeError(msg)
    if not math.isfinite(value):
        msg = f"{name} is {value!r}; {fix}"
        raise ValueError(msg)
    return float(value)


def seconds(*, minimum: float = 0.0, strict: bool = False, maximum: float | None = None) -> Any:
    """A validator: a finite number of seconds, ``> minimum`` if strict else ``>= minimum``,
    and at most ``maximum`` when given."""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        bound = f"> {minimum:g}" if strict else f">= {minimum:g}"
        if maximum is not None:
            bound += f" and <= {maximum:.0f}"
        fix = f"give seconds {bound} as a number, like {attribute.default!r}"
        number = _number(attribute.name, value, fix)
        if (number < minimum or (strict and number == minimum)
                or (maximum is not None and number > maximum)):
            msg = f"{attribute.name} is {value!r}; {fix}"
            raise ValueError(msg)

    return check


def optional_seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A validator: None (no limit) or a finite number of seconds > 0."""
    if value is None:
        return
    fix = f"give seconds > 0 as a number, like {attribute.default!r}, or None for no limit"
    if _number(attribute.name, value, fix) <= 0:
        msg = f"{attribute.name} is {value!r}; {fix}"
        raise ValueError(msg)


def integer(*, minimum: int, extra: str = "") -> Any:
    """A validator: an int (not a bool) ``>= minimum``."""

    def check(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
        fix = f"give an int >= {minimum}{extra}, like {attribute.default!r}"
        if isinstance(value, bool) or not isinstance(value, int):
            msg = f"{attribute.name} is {value!r} ({type(value).__name__}); {fix}"
            raise TypeError(msg)
        if value < minimum:
            msg = f"{attribute.name} is {value!r}; {fix}"
            raise ValueError(msg)

    return check


def delays(value: object) -> tuple[float, ...]:
    """The converter of ``backoff``: a sequence of nak delays, each checked like a ``Nak``'s."""
    fix = "give a tuple of seconds, like (1.0, 5.0, 30.0), or () for no delay"
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        msg = f"backoff is {value!r} ({type(value).__name__}); {fix}"
        raise TypeError(msg)
    items = tuple(value)
    for index, item in enumerate(items):
        try:
            check_delay(item)
        except (TypeError, ValueError) as exc:
            msg = f"backoff[{index}] of {items!r}: {exc}"
            raise type(exc)(msg) from None
    return tuple(float(item) for item in items)


def subject(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    """A validator: None or a literal subject (no wildcard: amebus publishes to it)."""
    if value is None:
        return
    fix = "give a literal subject that a stream captures, like 'dead.orders'"
    if not isinstance(value, str):
        msg = f"{attribute.name} is {value!r} ({type(value).__name__}); {fix}"
        raise TypeError(msg)
    if any(token in ("*", ">") for token in value.split(".")):
        msg = (f"{attribute.name} is {value!r}, a wildcard; amebus publishes each copy to "
               f"it, so {fix}")
        raise ValueError(msg)
    try:
        validate_literal(value)
    except SubjectError as err:
        msg = f"{attribute.name}: {err}; {fix}"
        raise ValueError(msg) from None


def _name(kind: str, name: str, value: object, *, optional: bool) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value:
        msg = f"{name} is {value!r}; give the {kind} name as a non-empty str"
        raise TypeError(msg)
    bad = [c for c in value if c in _NAME_CHARS or not c.isprintable()]
    if bad or len(value) > _MAX_NAME:
        why = (f"it contains {bad[0]!r}" if bad else f"it is {len(value)} characters long")
        msg = (f"{name} is {value!r}: {why}; a {kind} name may not hold '.', '*', '>', '/', "
               f"'\\\\', whitespace or control characters (nats-py's and the server's rule: it "
               f"becomes a file name and a subject token) and has at most {_MAX_NAME} "
               f"characters, like 'ORDERS' or 'orders-eu'")
        raise ValueError(msg)


def check_options(options: Mapping[str, Any]) -> None:
    """Check the serve options that are not :class:`~amebus.consumer.Settings` fields.

    Raises TypeError or ValueError (the caller turns them into ``ConfigurationError``).
    """
    from cattrs import BaseConverter

    _name("stream", "stream", options["stream"], optional=True)
    _name("consumer", "durable", options["durable"], optional=True)
    _name("stream", "dead_letter_stream", options.get("dead_letter_stream"), optional=True)
    subjects = options["stream_subjects"]
    if subjects is not None:
        if isinstance(subjects, str | bytes) or not isinstance(subjects, Iterable):
            msg = (f"stream_subjects is {subjects!r} ({type(subjects).__name__}); give a tuple "
                   f"of subject patterns, like ({subjects!r},)" if isinstance(subjects, str)
                   else f"stream_subjects is {subjects!r}; give a tuple of subject patterns")
            raise TypeError(msg)
        for pattern in subjects:
            validate_pattern(pattern)
    pending = options["max_ack_pending"]
    if isinstance(pending, bool) or not isinstance(pending, int) or pending == 0 or pending < -1:
        msg = f"max_ack_pending is {pending!r}; give an int >= 1, or -1 for no limit, like 1000"
        raise ValueError(msg)
    batch = options["batch"]
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        msg = f"batch is {batch!r}; give an int >= 1, like 512"
        raise ValueError(msg)
    if options["server_filter"] not in ("auto", "routes", "stream"):
        msg = f"server_filter is {options['server_filter']!r}; use 'auto', 'routes' or 'stream'"
        raise ValueError(msg)
    converter = options["converter"]
    if converter is not None and not isinstance(converter, BaseConverter):
        msg = (f"converter is {converter!r}; give a cattrs converter, like "
               f"amebus.make_converter(), or None for amebus's own")
        raise TypeError(msg)
    tracer = options["error_tracer"]
    if tracer is not None and not callable(getattr(tracer, "trace", None)):
        msg = (f"error_tracer is {tracer!r}; give an object with a trace(failure) method, "
               f"like amebus.LoggingTracer(), or None for the default")
        raise TypeError(msg)

