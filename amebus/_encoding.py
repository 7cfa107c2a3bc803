"""Why an event cannot be encoded: the path of the value its declared type's hook refused.

The codec calls `unencodable` when unstructuring or dumping an event fails. A value of the
wrong type (``1.5`` where a ``datetime`` or an enum is declared) makes a cattrs unstructure
hook raise whatever that value raises (``AttributeError: 'float' object has no attribute
'isoformat'``); `unencodable` walks the event down its declared types to name the value.
"""

from __future__ import annotations

import math
import sys
import types
import typing
from collections.abc import Mapping
from typing import Any

import attrs
from cattrs import BaseConverter

__all__ = ["UNSTRUCTURE_ERRORS", "unencodable"]

UNSTRUCTURE_ERRORS = (AttributeError, TypeError, ValueError, KeyError)
"""What an unstructure hook raises for a value of the wrong type."""

_SEQUENCES = (list, tuple, set, frozenset)


def _hints(cls: type[Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: the fields' own (maybe string) types
        return {field.name: field.type for field in attrs.fields(cls)}


def _children(value: Any, tp: Any) -> list[tuple[str, Any, Any]]:
    """(path step, value, declared type) of each part of ``value`` declared as ``tp``."""
    if attrs.has(type(value)) and (tp is type(value) or not isinstance(tp, type)
                                   or issubclass(type(value), tp)):
        hints = _hints(type(value))
        return [(f".{field.name}", getattr(value, field.name), hints.get(field.name, Any))
                for field in attrs.fields(type(value))]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:  # the union is the path
        return []
    if isinstance(value, Mapping):
        item_tp = args[1] if len(args) == 2 else Any
        return [(f"[{key!r}]", item, item_tp) for key, item in value.items()]
    if isinstance(value, _SEQUENCES):
        if origin is tuple and args and args[-1] is not Ellipsis:
            pairs = zip(value, args, strict=False)  # a wrong length: the hook's own error
            return [(f"[{i}]", item, tp_) for i, (item, tp_) in enumerate(pairs)]
        return [(f"[{i}]", item, args[0] if args else Any) for i, item in enumerate(value)]
    return []


def _locate(converter: BaseConverter, value: Any, tp: Any, path: str) -> tuple[str, Any, Any]:
    for step, item, item_tp in _children(value, tp):
        try:
            converter.unstructure(item, unstructure_as=item_tp)
        except UNSTRUCTURE_ERRORS:
            return _locate(converter, item, item_tp, path + step)
    return path, value, tp


def _not_json(value: Any, tp: Any, path: str) -> tuple[str, str] | None:
    """The path of the first number in ``value`` that JSON cannot hold, and what to say."""
    if value.__class__ is float and not math.isfinite(value):
        return path, (f"{value!r} (float) @ {path} is not JSON, which has no NaN or Infinity; "
                      f"give a finite number (or None in an Optional field)")
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            str(value)
        except ValueError:  # past sys.get_int_max_str_digits(): no decoder would read it
            return path, (f"an int of more than {sys.get_int_max_str_digits():,} digits @ "
                          f"{path} is past Python's int-to-text limit, which a Python consumer "
                          f"applies when decoding too; send so large a number as a str")
    for step, item, item_tp in _children(value, tp):
        found = _not_json(item, item_tp, path + step)
        if found is not None:
            return found
    return None


def _name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:  # a repr that raises (an int past the digit limit, a broken __repr__)
        return f"<{type(value).__qualname__} instance>"


def unencodable(converter: BaseConverter, event: object, err: Exception) -> TypeError | ValueError:
    """Return the error to raise for ``event``, which failed to encode with ``err``.

    A value its declared type's unstructure hook refused is a ``TypeError`` quoting the value
    and its path (``expected datetime, got 1.5 (float) @ $.at``); a number JSON cannot hold
    (NaN, Infinity, an int past Python's int-to-text limit) is a ``ValueError`` with its
    path; anything else keeps the class of ``err`` with the event quoted.
    """
    cls = type(event)
    path, value, tp = _locate(converter, event, cls, "$")
    if path != "$":
        msg = (f"cannot encode {cls.__qualname__}: expected {_name(tp)}, got {_repr(value)} "
               f"({type(value).__name__}) @ {path}; give each field a value of its declared "
               f"type (or register an unstructure hook for it on the converter)")
        return TypeError(msg)
    number = _not_json(event, cls, "$") if isinstance(err, ValueError) else None
    if number is not None:
        msg = f"cannot encode {cls.__qualname__}: {number[1]}"
        return ValueError(msg)
    msg = (f"cannot encode {_repr(event)} as JSON: {err}; give every field a JSON type (str, int, "
           f"float, bool, None, list, dict, attrs class, enum, datetime, bytes) or register "
           f"an unstructure hook on the converter")
    return ValueError(msg) if isinstance(err, ValueError) else TypeError(msg)
