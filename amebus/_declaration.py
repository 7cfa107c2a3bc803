"""The checks of an Event class declaration: class attributes that attrs would turn into
fields, the kind of subject, the subject pattern and the event type name. Used by
:mod:`amebus.events` when attrs finishes building the class.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any

import attrs

from amebus.errors import ConfigurationError, SubjectError
from amebus.subjects import matches, validate_literal, validate_pattern

__all__ = ["CLASS_ATTRIBUTES", "EVENT_TYPE_HEADER", "annotated_error", "check_annotations",
           "check_fields", "event_type_of", "pattern_of", "subject_kind"]

EVENT_TYPE_HEADER = "Amebus-Event-Type"
"""The header naming the event class of a published message (its ``event_type``)."""

CLASS_ATTRIBUTES = ("subject", "subject_pattern", "event_type", "converter")
_BAD_TYPE_CHARS = re.compile(r"[\s\x00-\x1f\x7f]")


def annotated_error(cls: type[Any], attribute: str, default: object) -> ConfigurationError:
    value = "..." if default is attrs.NOTHING else repr(default)
    kind = "cattrs.Converter" if attribute == "converter" else "str"
    msg = (f"{cls.__qualname__}.{attribute} is annotated, so attrs made it a field of "
           f"the payload; write `{attribute}: ClassVar[{kind}] = {value}` or drop the "
           f"annotation")
    return ConfigurationError(msg)


def check_annotations(cls: type[Any]) -> None:
    """The class body annotates ``subject`` (or another class attribute) without ClassVar:
    refused when the class is created, before attrs turns it into a field (and, with a
    default before required fields, fails with its own unrelated field-order error)."""
    annotations = inspect.get_annotations(cls)
    for attribute in CLASS_ATTRIBUTES:
        annotation = annotations.get(attribute)
        if annotation is None or "ClassVar" in str(annotation):
            continue
        default = cls.__dict__.get(attribute, attrs.NOTHING)
        plain = default is None or isinstance(default, str | int | float | tuple)
        default = default if plain else attrs.NOTHING  # attrs.field(...): shown as "..."
        raise annotated_error(cls, attribute, default)


def check_fields(cls: type[Any]) -> None:
    fields = attrs.fields_dict(cls)
    for attribute in CLASS_ATTRIBUTES:
        if attribute in fields:
            raise annotated_error(cls, attribute, fields[attribute].default)
    if "publish" in fields:
        msg = (f"{cls.__qualname__} has a field named 'publish', which hides "
               f"Event.publish(); rename the field")
        raise ConfigurationError(msg)


def subject_kind(cls: type[Any]) -> tuple[str | None, Callable[[Any], object] | None]:
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


def pattern_of(cls: type[Any], static: str | None) -> tuple[str, ...] | None:
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


def event_type_of(cls: type[Any]) -> str:
    value = cls.__dict__.get("event_type", cls.__qualname__)
    if not isinstance(value, str) or not value or _BAD_TYPE_CHARS.search(value):
        msg = (f"{cls.__qualname__}.event_type is {value!r}; it names the class in the "
               f"{EVENT_TYPE_HEADER} header, so give a non-empty str without whitespace, "
               f"like 'orders.paid.v1'")
        raise ConfigurationError(msg)
    return value
