"""An AsyncAPI 3.0 document describing what a Service receives: one channel and one
``receive`` operation per route, one message per event class with its JSON payload schema.

The payload schemas follow amebus's wire format (:func:`amebus.codec.make_converter`): attrs
classes are objects keyed by field name, ``bytes`` is a base64 string, ``datetime`` and
``date`` are ISO 8601 strings, enums are their values. Written here rather than taken from a
library: the JSON Schema generators at hand (pydantic, msgspec) model their own wire formats,
not this converter's, and would be a dependency for one command.
"""

from __future__ import annotations

import enum
import inspect
import types
import typing
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from typing import Any

import attrs

from amebus.events import EVENT_TYPE_HEADER
from amebus.routing import CompiledRoute
from amebus.service import Service

__all__ = ["asyncapi_document", "json_schema"]

_SCALARS: Mapping[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    bytes: {"type": "string", "contentEncoding": "base64"},
    datetime: {"type": "string", "format": "date-time"},
    date: {"type": "string", "format": "date"},
    type(None): {"type": "null"},
    Any: {},
}


def json_schema(annotation: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    """The JSON Schema of one annotation; attrs classes go to ``schemas`` and are referenced.

    >>> json_schema(list[int], {})
    {'type': 'array', 'items': {'type': 'integer'}}
    """
    if annotation in _SCALARS:
        return dict(_SCALARS[annotation])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [json_schema(arg, schemas) for arg in args]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, set, frozenset, Sequence) or (origin is tuple and args[-1:] == (...,)):
        return {"type": "array", "items": json_schema(args[0], schemas) if args else {}}
    if origin is tuple:
        return {"type": "array", "minItems": len(args), "maxItems": len(args),
                "items": [json_schema(arg, schemas) for arg in args]}
    if origin in (dict, Mapping):
        value = json_schema(args[1], schemas) if len(args) == 2 else {}
        return {"type": "object", "additionalProperties": value}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [member.value for member in annotation]}
    if isinstance(annotation, type) and attrs.has(annotation):
        name = _key(annotation, schemas)
        if name not in schemas:
            schemas[name] = {_CLASS: annotation}  # a recursive class refers to itself
            schemas[name] = {_CLASS: annotation, **_object_schema(annotation, schemas)}
        return {"$ref": f"#/components/schemas/{name}"}
    return {}  # a type amebus's converter handles by a custom hook: not described


_CLASS = "\0class"  # which class a components.schemas entry is of, while building


def _key(cls: type[Any], schemas: Mapping[str, Any]) -> str:
    """The class's name, or its full dotted path (dots as ``_``) if another class has it."""
    taken = schemas.get(cls.__name__)
    if taken is None or taken.get(_CLASS) is cls:
        return cls.__name__
    return f"{cls.__module__}.{cls.__qualname__}".replace(".", "_")


def _object_schema(cls: type[Any], schemas: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    properties, required = {}, []
    for field in attrs.fields(cls):
        properties[field.name] = json_schema(hints.get(field.name, Any), schemas)
        if field.default is attrs.NOTHING:
            required.append(field.name)
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    doc = _own_doc(cls)
    if doc:
        schema["description"] = doc.split("\n\n", 1)[0]
    return schema


def _own_doc(cls: type[Any]) -> str:
    """The class's own docstring (inspect.getdoc would inherit Event's or Service's)."""
    doc = cls.__dict__.get("__doc__")
    return inspect.cleandoc(doc) if isinstance(doc, str) else ""


def _address(pattern: str) -> tuple[str, dict[str, Any]]:
    """A NATS pattern as an AsyncAPI address: each wildcard becomes a parameter."""
    tokens, parameters = [], {}
    for index, token in enumerate(pattern.split("."), 1):
        if token == "*":
            tokens.append(f"{{token{index}}}")
            parameters[f"token{index}"] = {"description": "any one subject token (NATS *)"}
        elif token == ">":
            tokens.append("{rest}")
            parameters["rest"] = {"description": "one or more trailing tokens (NATS >)"}
        else:
            tokens.append(token)
    return ".".join(tokens), parameters


def _messages(route: CompiledRoute, schemas: dict[str, Any]) -> dict[str, Any]:
    if route.takes != "event":
        return {"raw": {"contentType": "application/octet-stream",
                        "payload": {"type": "string", "format": "binary"}}}
    messages = {}
    for event in route.events:
        event_type = str(getattr(event, "event_type", event.__qualname__))
        payload = json_schema(event, schemas)
        messages[payload["$ref"].rpartition("/")[2]] = {
            "name": event_type,
            "title": event.__qualname__,
            "contentType": "application/json",
            "headers": {"type": "object", "properties": {
                EVENT_TYPE_HEADER: {"type": "string", "const": event_type}}},
            "payload": payload,
        }
    return messages


def asyncapi_document(cls: type[Service], *, title: str | None = None,
                      version: str = "0.0.0", server: str | None = None) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of ``cls``'s routes, as a JSON-ready dict.

    Args:
        cls: the Service class.
        title: ``info.title``; the class name by default.
        version: ``info.version``, the version of the service's API.
        server: a NATS URL (``nats://host:4222``) to list under ``servers``.
    """
    schemas: dict[str, Any] = {}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for route in cls.routes:
        address, parameters = _address(route.pattern)
        channel: dict[str, Any] = {"address": address, "messages": _messages(route, schemas),
                                   "description": f"NATS subjects {route.pattern!r} of stream "
                                                  f"{cls.stream or '(set at serve time)'}"}
        if parameters:
            channel["parameters"] = parameters
        channels[route.name] = channel
        operation: dict[str, Any] = {
            "action": "receive",
            "channel": {"$ref": f"#/channels/{route.name}"},
            "messages": [{"$ref": f"#/channels/{route.name}/messages/{key}"}
                         for key in channel["messages"]],
        }
        doc = inspect.getdoc(route.handler)
        if doc:
            operation["summary"] = doc.splitlines()[0]
        operations[route.name] = operation
    info: dict[str, Any] = {"title": title or cls.__qualname__, "version": version}
    doc = _own_doc(cls)
    if doc:
        info["description"] = doc
    document: dict[str, Any] = {"asyncapi": "3.0.0", "info": info,
                                "defaultContentType": "application/json"}
    if server:
        host = server.split("://", 1)[-1].split(",", 1)[0]
        document["servers"] = {"nats": {"host": host, "protocol": "nats"}}
    document.update(channels=channels, operations=operations)
    if schemas:
        document["components"] = {"schemas": {
            name: {k: v for k, v in schema.items() if k != _CLASS}
            for name, schema in schemas.items()}}
    return document
