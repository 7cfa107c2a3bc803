"""Why an event cannot be encoded: the path of the value its declared type's hook refused.

The codec calls `unencodable` when unstructuring or dumping an event fails. A value of the
wrong type (``1.5`` where a ``datetime`` or an enum is declared) makes a cattrs unstructure
hook raise whatever that value raises (``AttributeError: 'float' object has no attribute
'isoformat'``); `unencodable` walks the event down its declared types to name the value.
"""

from __future__ import annotations

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
    if isinstance(value, Mapping) and len(args) == 2:
        return [(f"[{key!r}]", item, args[1]) for key, item in value.items()]
    if isinstance(value, _SEQUENCES) and args:
        if origin is tuple and args[-1] is not Ellipsis:
            pairs = zip(value, args, strict=False)  # a wrong length: the hook's own error
            return [(f"[{i}]", item, tp_) for i, (item, tp_) in enumerate(pairs)]
        return [(f"[{i}]", item, args[0]) for i, item in enumerate(value)]
    return []


def _locate(converter: BaseConverter, value: Any, tp: Any, path: str) -> tuple[str, Any, Any]:
    for step, item, item_tp in _children(value, tp):
        try:
            converter.unstructure(item, unstructure_as=item_tp)
        except UNSTRUCTURE_ERRORS:
            return _locate(converter, item, item_tp, path + step)
    return path, value, tp


def _name(tp: Any) -> str:
    return tp.__qualname__ if isinstance(tp, type) else repr(tp).replace("typing.", "")


def unencodable(converter: BaseConverter, event: object, err: Exception) -> TypeError | ValueError:
    """Return the error to raise for ``event``, which failed to encode with ``err``.

    A value its declared type's unstructure hook refused is a ``TypeError`` quoting the value
    and its path (``expected datetime, got 1.5 (float) @ $.at``); anything else keeps the
    class of ``err`` (``ValueError`` for a NaN) with the event quoted.
    """
    cls = type(event)
    path, value, tp = _locate(converter, event, cls, "$")
    if path != "$":
        msg = (f"cannot encode {cls.__qualname__}: expected {_name(tp)}, got {value!r} "
               f"({type(value).__name__}) @ {path}; give each field a value of its declared "
               f"type (or register an unstructure hook for it on the converter)")
        return TypeError(msg)
    msg = (f"cannot encode {event!r} as JSON: {err}; give every field a JSON type (str, int, "
           f"float, bool, None, list, dict, attrs class, enum, datetime, bytes) or register "
           f"an unstructure hook on the converter")
    return ValueError(msg) if isinstance(err, ValueError) else TypeError(msg)
