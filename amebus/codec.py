"""The JSON wire format of events: a private, strict cattrs converter and the Codec using it.

The consumer asks for ``decoder(cls)`` once per route and calls it per message.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable
from datetime import date, datetime
from typing import Any, TypeVar

import attrs
import msgspec
from cattrs import BaseConverter, Converter
from cattrs.errors import BaseValidationError
from cattrs.preconf.json import make_converter as _make_json_converter
from cattrs.v import format_exception, transform_error

from amebus._encoding import UNSTRUCTURE_ERRORS, unencodable
from amebus._fastdecode import fast_decoder
from amebus.errors import ConfigurationError, DecodeError

__all__ = ["Codec", "default_codec", "make_converter"]

E = TypeVar("E")


class _WrongTypeError(TypeError):
    """A JSON value of the wrong type; its message is already readable."""


def _wrong(expected: str, value: object) -> _WrongTypeError:
    return _WrongTypeError(f"expected {expected}, got {value!r} ({type(value).__name__})")


def _str(value: Any, cls: type[Any]) -> Any:
    if value.__class__ is not str:
        raise _wrong("str", value)
    return value if cls is str else cls(value)  # a str enum, when singledispatch lands here


def _int(value: Any, cls: type[Any]) -> Any:
    if value.__class__ is not int:  # refuses bool (an int subclass) and 1.0
        raise _wrong("int", value)
    return value if cls is int else cls(value)


def _float(value: Any, cls: type[Any]) -> Any:
    if value.__class__ is not float and value.__class__ is not int:
        raise _wrong("number", value)
    try:
        return cls(value)
    except OverflowError:  # an int past the float range (10**400)
        raise _wrong("number within the float range", value) from None


def _bool(value: Any, _: type[Any]) -> bool:
    if value.__class__ is not bool:
        raise _wrong("true or false", value)
    return bool(value)


def _bytes(value: Any, _: type[Any]) -> bytes:
    if value.__class__ is not str:
        raise _wrong("base64 str", value)
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error:
        raise _wrong("base64 str", value) from None


def _datetime(value: Any, cls: type[Any]) -> Any:
    if value.__class__ is not str:
        raise _wrong("ISO 8601 str", value)
    return cls.fromisoformat(value)


def _text_bytes(value: Any, _: type[Any]) -> bytes:
    if value.__class__ is not str:
        raise _wrong("str", value)
    return value.encode()


def make_converter(*, bytes_as: str = "base64") -> Converter:
    """Return a new converter for amebus's JSON wire format.

    ``bytes_as="text"`` reads and writes ``bytes`` fields as UTF-8 text instead of base64:
    what FastStream (pydantic) sends for a ``bytes`` field. Set it on the events you share
    with FastStream services: ``converter = make_converter(bytes_as="text")``.

    - attrs classes are JSON objects keyed by field name; unknown keys are ignored, so a
      producer may add fields before its consumers know them;
    - ``str``, ``int``, ``float`` and ``bool`` are strict: a JSON value of another type is a
      decode error (``1`` is not ``"1"``, ``true`` is not ``1``); a float field accepts ``1``;
    - ``datetime`` and ``date`` are ISO 8601 strings; ``bytes`` are standard base64;
    - enums are their values; ``None`` is ``null``; lists, tuples and sets are arrays;
      dicts are objects, so their keys must be ``str`` (or a str enum);
    - unions of ``str``, ``int``, ``float``, ``bool`` and ``None`` pass through by JSON type;
      a union of attrs classes is told apart by a field unique to one class. For an explicit
      tag use ``cattrs.strategies.configure_tagged_union(Union, converter)`` on a converter
      from this function and set it as the event's ``converter``.
    """
    converter = _make_json_converter()
    converter.register_structure_hook(str, _str)
    converter.register_structure_hook(int, _int)
    converter.register_structure_hook(float, _float)
    converter.register_structure_hook(bool, _bool)
    if bytes_as == "text":
        converter.register_structure_hook(bytes, _text_bytes)
        converter.register_unstructure_hook(bytes, lambda value: value.decode())
    elif bytes_as == "base64":
        converter.register_structure_hook(bytes, _bytes)
        converter.register_unstructure_hook(bytes, lambda value: base64.b64encode(value).decode())
    else:
        msg = f"bytes_as is {bytes_as!r}; give 'base64' (amebus's default) or 'text'"
        raise ValueError(msg)
    converter.register_structure_hook(datetime, _datetime)
    converter.register_structure_hook(date, _datetime)
    return converter


def _format(exc: BaseException, cls: type[Any] | None) -> str:
    if isinstance(exc, _WrongTypeError):
        return str(exc)
    return format_exception(exc, cls)


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):  # 1e400 parses to inf: refused like Infinity
        msg = f"{text} is out of the float range (Infinity is not JSON)"
        raise ValueError(msg)
    return value


_loads: Callable[[str], Any] = json.JSONDecoder(parse_constant=_reject_constant,
                                                parse_float=_finite_float).decode
_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _dumps(obj: Any) -> bytes:
    return _encoder.encode(obj).encode()


_HOOKS: dict[type[Any], Any] = {str: _str, int: _int, float: _float, bool: _bool}

_JSON_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}


def _parse(data: bytes, target: type[Any]) -> dict[str, Any]:
    try:
        obj = _loads(data.decode())
    except (ValueError, RecursionError) as err:  # Unicode and JSON errors; RecursionError:
        # nesting deeper than the interpreter can parse (a few thousand "[" are enough)
        msg = (f"cannot decode {len(data)} bytes into {target.__qualname__}: the payload is not "
               f"UTF-8 JSON ({err}); the producer must publish a JSON object")
        raise DecodeError(msg, errors=(str(err),), size=len(data), target=target) from None
    if obj.__class__ is not dict:
        msg = (f"cannot decode {len(data)} bytes into {target.__qualname__}: the payload is a "
               f"JSON {_JSON_NAMES.get(type(obj), 'value')}, not an object; an event is a JSON "
               f"object of its fields")
        raise DecodeError(msg, errors=(msg,), size=len(data), target=target)
    return obj


def _converter_for(cls: type[Any], fallback: BaseConverter) -> BaseConverter:
    own = getattr(cls, "converter", None)
    return own if isinstance(own, BaseConverter) else fallback


def _require_attrs(cls: object, where: str) -> None:
    if not (isinstance(cls, type) and attrs.has(cls)):
        msg = (f"{where} takes an attrs class such as an Event subclass, got {cls!r}; "
               f"decorate the class with @attrs.frozen")
        raise ConfigurationError(msg)


class Codec:
    """Encodes events to JSON bytes and decodes them back, strictly.

    A class that sets ``converter = make_converter()`` (a class attribute) is encoded and
    decoded with that converter instead of this codec's.

    Args:
        converter: the converter to use; ``None`` makes one with ``make_converter()``.
        fast: with no ``converter``, decode with msgspec where that equals the cattrs path
            (docs/events.md); ``False``, or a given converter, keeps the cattrs path.
    """

    def __init__(self, converter: BaseConverter | None = None, *, fast: bool = True) -> None:
        self.converter = make_converter() if converter is None else converter
        self._fast = fast and converter is None  # a given converter may hold any hook
        self._encoders: dict[type[Any], Callable[[Any, bool], bytes]] = {}
        self._decoders: dict[type[Any], Callable[[bytes], Any]] = {}

    def encode(self, event: object, *, check: bool = False) -> bytes:
        """Return the JSON bytes of an attrs instance.

        With ``check=True`` the encoded fields are first decoded back with the same strict
        rules a consumer uses, and a field it would refuse (``order_id: str`` holding ``1``)
        raises ``TypeError`` naming its path: publishing is as strict as decoding.
        """
        encoder = self._encoders.get(type(event))
        if encoder is None:
            encoder = self._encoders[type(event)] = self._make_encoder(type(event))
        return encoder(event, check)

    def decode(self, cls: type[E], data: bytes) -> E:
        """Return ``data`` decoded into ``cls``; any failure is a ``DecodeError``."""
        return self.decoder(cls)(data)

    def decoder(self, cls: type[E]) -> Callable[[bytes], E]:
        """Return a function decoding bytes into ``cls``, its structure hook looked up once."""
        decoder = self._decoders.get(cls)
        if decoder is None:
            decoder = self._decoders[cls] = self._make_decoder(cls)
        return decoder

    def _make_encoder(self, cls: type[Any]) -> Callable[[Any, bool], bytes]:
        _require_attrs(cls, "Codec.encode()")
        converter = _converter_for(cls, self.converter)
        unstructure = converter.get_unstructure_hook(cls)
        structure = converter.get_structure_hook(cls)

        def check(obj: Any) -> None:
            try:
                structure(obj, cls)
            except (BaseValidationError, ValueError, TypeError, KeyError) as err:
                errors = transform_error(err, "$", _format)
                msg = (f"cannot publish {cls.__qualname__}: {'; '.join(errors)}; a consumer "
                       f"decoding {cls.__qualname__} would refuse it: give each field a value "
                       f"of its declared type")
                raise TypeError(msg) from None

        def encode(event: Any, checked: bool) -> bytes:
            try:
                obj = unstructure(event)
                if not checked:
                    return _dumps(obj)
            except UNSTRUCTURE_ERRORS as err:  # a hook given the wrong type: AttributeError...
                raise unencodable(converter, event, err) from err
            check(obj)  # outside the try: its TypeError already names the field
            try:
                return _dumps(obj)
            except (TypeError, ValueError) as err:
                raise unencodable(converter, event, err) from err

        return encode

    def _make_decoder(self, cls: type[E]) -> Callable[[bytes], E]:
        _require_attrs(cls, "Codec.decoder()")
        converter = _converter_for(cls, self.converter)
        structure = converter.get_structure_hook(cls)

        def decode(data: bytes) -> E:
            obj = _parse(data, cls)
            try:
                return structure(obj, cls)  # type: ignore[no-any-return]
            except (BaseValidationError, ValueError, TypeError, KeyError) as err:
                errors = transform_error(err, "$", _format)
                msg = (f"cannot decode {len(data)} bytes into {cls.__qualname__}: "
                       f"{'; '.join(errors)}; the producer's schema differs from this class")
                raise DecodeError(msg, errors=errors, size=len(data), target=cls) from None

        fast = (fast_decoder(cls, converter, _HOOKS)
                if self._fast and converter is self.converter else None)
        if fast is None:
            return decode
        fast_decode = fast

        def decode_fast(data: bytes) -> E:
            try:
                if not data.isascii():
                    data.decode()  # msgspec skips unknown keys' strings unchecked: check UTF-8
                return fast_decode(data)  # type: ignore[no-any-return]
            except (msgspec.MsgspecError, UnicodeError, ValueError, TypeError, KeyError,
                    RecursionError):
                return decode(data)  # the definition: its value, or its detailed DecodeError

        return decode_fast


default_codec = Codec()
"""The codec ``Event.publish`` and ``publish_many`` use."""
