"""What a handler receives, decided once at class creation from its signature and annotations.

A handler is a function, a method, or an object with an async ``process`` method; its first
parameter takes an Event class (or a union of them), ``bytes`` or ``nats.aio.msg.Msg``. At run
time the consumer sees a :class:`Processor` or resolved :class:`Handler` routes, and publishes
the :func:`events_of` a handler's result.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from amebus.errors import ConfigurationError
from amebus.subjects import intersects, validate_pattern

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.settlement import RouteStats

__all__ = ["Handler", "Processor", "ProcessorHandler", "Resolver", "Takes", "check_handler",
           "describe", "events_of", "signature"]

Takes = Literal["event", "message", "payload"]
"""What a handler's first parameter receives."""


class Processor(Protocol):
    """Anything with ``async def process(self, input)``: the seed's Processor."""

    async def process(self, input: Msg, /) -> Any:
        """Handle one message; raise to fail it, ``Nak``/``Term`` to steer settlement."""


class Handler(Protocol):
    """A resolved route: its name, counters, timeout (None: the settings'), and how to run it
    on a message."""

    name: str
    stats: RouteStats
    timeout: float | None
    run: Callable[[Msg], Awaitable[Any]]


class ProcessorHandler:
    """A bare :class:`Processor` as the one :class:`Handler` of a consumer without routes."""

    def __init__(self, processor: Processor) -> None:
        from amebus.settlement import RouteStats

        self.name = type(processor).__name__
        self.stats = RouteStats()
        self.timeout: float | None = None  # the settings' timeout
        self.run: Callable[[Msg], Awaitable[Any]] = processor.process


class Resolver(Protocol):
    """The routes of one processor instance: every :class:`Handler` by name, and the one a
    subject goes to (None: no route handles it)."""

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Every route's handler, by route name."""

    def resolve(self, subject: str) -> Handler | None:
        """The handler of ``subject``."""


def events_of(result: Any) -> list[Any]:
    """The events a handler returned (an Event, or a list or tuple of them; else none).

    Raises:
        TypeError: the result mixes events and other values.
    """
    from amebus.events import Event

    if isinstance(result, Event):
        return [result]
    if isinstance(result, list | tuple):
        events = [item for item in result if isinstance(item, Event)]
        if events and len(events) != len(result):
            msg = (f"the handler returned {result!r}, which mixes events and other values; "
                   f"return an Event, a list of Events, or None")
            raise TypeError(msg)
        return events
    return []


def check_handler(handler: Any, where: str) -> Any:
    """Return ``handler`` if it can be called or has ``process()``; ``where`` starts the error."""
    if isinstance(handler, type):
        msg = (f"{where}: handler {handler.__qualname__} is a class; pass an instance, "
               f"Route(pattern, {handler.__qualname__}()), or mount a Service class in a "
               f"Router(prefix, name={handler.__qualname__})")
        raise ConfigurationError(msg)
    if callable(handler):
        return handler
    if callable(getattr(handler, "process", None)):
        return handler
    msg = (f"{where}: handler {handler!r} is not callable and has no process() method; pass "
           f"a function, an async function, or an object with `async def process(self, input)`")
    raise ConfigurationError(msg)


def _callable_of(handler: Any) -> Callable[..., Any]:
    if not callable(handler) or (not inspect.isroutine(handler) and hasattr(handler, "process")):
        return typing.cast(Callable[..., Any], handler.process)
    return typing.cast(Callable[..., Any], handler)


def signature(handler: Any, *, is_method: bool, event: type[Any] | None, pattern: str,
              name: str, localns: Mapping[str, Any], batch: bool = False
              ) -> tuple[Takes, tuple[type[Any], ...], bool]:
    """Decide once what a handler receives, from its parameters' annotations.

    Returns what the first parameter takes, the Event classes it accepts (several for a
    union), and whether a second parameter takes the raw message. ``event`` is the Event class
    the route was declared with (``Route(OrderPaid)``), if any. A ``batch`` route's handler
    takes one list (``list[OrderPaid]``): its items are read as the first parameter here.
    """
    from amebus.events import is_event_class

    declared = event
    func = _callable_of(handler)
    where = f"route {name} ({pattern!r}) handler {describe(handler)}"
    try:
        params = list(inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: give them the message
        return "message", (), False
    if is_method and params:
        params = params[1:]  # self
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not positional and not any(p.kind is p.VAR_POSITIONAL for p in params):
        msg = f"{where} takes no argument; give it one parameter for the message or event"
        raise ConfigurationError(msg)
    if len(required) > 2:
        msg = (f"{where} requires {len(required)} arguments; a handler takes the event (or "
               f"message, or payload bytes) and optionally the raw message")
        raise ConfigurationError(msg)
    hints = _hints(func, where, localns)
    first = hints.get(positional[0].name) if positional else None
    if batch:
        first = _batch_item(first, where, positional[0].name if positional else "*args",
                            len(required))
    takes: Takes
    members = typing.get_args(first) if _is_union(first) else ()
    if first is None or first is Any:
        takes = "event" if event is not None else "message"
    elif members and all(is_event_class(m) for m in members):
        takes, events = "event", tuple(members)  # told apart by the event-type header
        if declared is not None:
            msg = (f"{where} takes a union of events but the route is declared for "
                   f"{declared.__qualname__}; declare the route with a pattern instead")
            raise ConfigurationError(msg)
        for member in events:
            _check_overlap(where, member, pattern)
        return takes, events, len(required) == 2 and _second_ok(where, hints, required)
    elif is_event_class(first):
        takes, event = "event", first
        if declared is not None and declared is not first:
            msg = (f"{where} expects {first.__qualname__} but the route is declared for "
                   f"{declared.__qualname__}; make them the same class")
            raise ConfigurationError(msg)
    elif first is bytes:
        takes = "payload"
    elif _is_nats_msg(first):
        takes = "message"
    else:
        hint = ("; a handler of a list of events needs Route(..., batch=Batch(size=..., "
                "wait=...))" if typing.get_origin(first) is list and not batch else "")
        msg = (f"{where}: first parameter {positional[0].name!r} is annotated {first!r}; "
               f"annotate it with an Event subclass, bytes, or nats.aio.msg.Msg{hint}")
        raise ConfigurationError(msg)
    if event is not None:
        _check_overlap(where, event, pattern)
    with_message = len(required) == 2 and _second_ok(where, hints, required)
    return takes, (event,) if event is not None else (), with_message


def _batch_item(annotation: Any, where: str, name: str, required: int) -> Any:
    """The item type of a batch handler's list parameter (None: not annotated)."""
    if required > 1:
        msg = (f"{where} is a batch route and requires {required} arguments; a batch handler "
               f"takes one: the list of events (or payloads, or messages)")
        raise ConfigurationError(msg)
    if annotation is None or annotation is Any or annotation in (list, Sequence):
        return None
    if typing.get_origin(annotation) in (list, Sequence):
        (item,) = typing.get_args(annotation)
        return item
    shown = getattr(annotation, "__qualname__", None) or repr(annotation)
    msg = (f"{where} is a batch route, but its parameter {name!r} is annotated {shown}; it "
           f"receives a list: annotate it list[{shown}]")
    raise ConfigurationError(msg)


def _check_overlap(where: str, event: type[Any], pattern: str) -> None:
    from amebus.events import event_pattern

    expected = event_pattern(event)
    if expected is not None and not intersects(expected, validate_pattern(pattern)):
        msg = (f"{where} decodes {event.__qualname__}, whose subjects follow "
               f"{'.'.join(expected)!r}, but the route's pattern {pattern!r} can never "
               f"match them; fix the route's pattern or the event's subject")
        raise ConfigurationError(msg)


def _second_ok(where: str, hints: Mapping[str, Any], required: list[inspect.Parameter]) -> bool:
    second = hints.get(required[1].name)
    if second is not None and second is not Any and not _is_nats_msg(second):
        msg = (f"{where}: second parameter {required[1].name!r} is annotated {second!r}; "
               f"the second argument is the raw message (nats.aio.msg.Msg)")
        raise ConfigurationError(msg)
    return True


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _hints(func: Callable[..., Any], where: str, localns: Mapping[str, Any]) -> dict[str, Any]:
    target = getattr(func, "__func__", func)
    try:
        return typing.get_type_hints(target, localns=dict(localns))
    except Exception as exc:
        msg = (f"{where}: its annotations cannot be resolved ({exc}); import the annotated "
               f"classes at module level, before the Service class is defined")
        raise ConfigurationError(msg) from exc


def _is_nats_msg(annotation: Any) -> bool:
    return (isinstance(annotation, type) and annotation.__name__ == "Msg"
            and annotation.__module__ == "nats.aio.msg")


def describe(handler: Any) -> str:
    """A handler's name for messages: its qualified name, or its class's for an object."""
    return str(getattr(handler, "__qualname__", None) or type(handler).__qualname__)
