"""The one-step decode: msgspec straight into the attrs class, where it equals the cattrs path.

`fast_decoder` inspects a class's field types once and returns ``None`` unless every type is
one msgspec decodes exactly as amebus's cattrs converter does (see docs/events.md, "The fast
path"). The cattrs path stays the definition: on any msgspec error the caller re-decodes with
cattrs, which returns the value msgspec refused to build or raises the detailed DecodeError.
"""

from __future__ import annotations

import enum
import types
import typing
from collections.abc import Callable
from typing import Any

import attrs
import msgspec
from cattrs import BaseConverter

__all__ = ["fast_decoder"]

_SCALARS = (str, int, float, bool)
_NONE = type(None)


def _own_converter(cls: type[Any]) -> bool:
    return isinstance(getattr(cls, "converter", None), BaseConverter)


def _enum_ok(cls: type[enum.Enum]) -> bool:
    values = [member.value for member in cls]
    if not values or issubclass(cls, enum.Flag):
        return False
    return (all(value.__class__ is str for value in values)
            or all(value.__class__ is int for value in values))


def _type_ok(tp: Any, hooks: dict[type[Any], Any], seen: set[type[Any]]) -> bool:
    if tp in _SCALARS:
        return True
    if tp is _NONE:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        rest = [arg for arg in args if arg is not _NONE]
        return len(args) == 2 and len(rest) == 1 and _type_ok(rest[0], hooks, seen)
    if origin is list:
        return len(args) == 1 and _type_ok(args[0], hooks, seen)
    if origin is dict:
        return len(args) == 2 and args[0] is str and _type_ok(args[1], hooks, seen)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return _enum_ok(tp)  # all-str or all-int values: decoded by value on both paths
    if isinstance(tp, type) and attrs.has(tp):
        return _class_ok(tp, hooks, seen)
    return False  # datetime, bytes, tuple, set, Any, other unions...: the cattrs path


def _class_ok(cls: type[Any], hooks: dict[type[Any], Any], seen: set[type[Any]]) -> bool:
    if cls in seen:
        return False  # a recursive class: leave it to cattrs
    seen.add(cls)
    if _own_converter(cls) or hasattr(cls, "__attrs_pre_init__"):
        return False
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an unresolvable annotation: cattrs reports it itself
        return False
    for field in attrs.fields(cls):
        if (not field.init or field.converter is not None or field.name.startswith("_")
                or field.alias != field.name):
            return False
        default = field.default
        if isinstance(default, attrs.Factory) and default.takes_self:  # type: ignore[arg-type]
            return False
        if not _type_ok(hints.get(field.name), hooks, seen):
            return False
    seen.discard(cls)
    return True


def fast_decoder(cls: type[Any], converter: BaseConverter,
                 expected_hooks: dict[type[Any], Any]) -> Callable[[bytes], Any] | None:
    """Return a msgspec decode function for ``cls``, or ``None`` where only cattrs is exact.

    ``expected_hooks`` maps each scalar type to the structure hook amebus registers for it;
    a converter whose hooks for these types were replaced keeps the cattrs path.
    """
    for tp, hook in expected_hooks.items():
        if converter.get_structure_hook(tp) is not hook:
            return None
    if not _class_ok(cls, expected_hooks, set()):
        return None
    try:
        return msgspec.json.Decoder(cls).decode
    except (TypeError, ValueError):  # a type msgspec cannot build a decoder for
        return None
