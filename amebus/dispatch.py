"""Binding a service's compiled routes to one instance: one :class:`Dispatch` per instance.

A :class:`Dispatch` holds a :class:`Bound` handler per route (the message decoded as the
handler asked: its event, a union member chosen by the event-type header, the payload or the
message itself), the instances of mounted Service classes, and the one matcher that resolves
a subject to its handler. The consumer and the test harness both run messages through it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from amebus import once
from amebus.batching import BatchCall
from amebus.codec import Codec, default_codec
from amebus.errors import ConfigurationError, DecodeError, NoRouteError
from amebus.events import EVENT_TYPE_HEADER
from amebus.matcher import Matcher
from amebus.routing import CompiledRoute, ServiceMeta
from amebus.settlement import RouteStats

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.handlers import Handler

__all__ = ["Bound", "Dispatch", "dispatch_of"]

_KEY = "_amebus_bound"
"""The instance ``__dict__`` key of its Dispatch (a subclass's ``__init__`` need not call
``super().__init__()``, so it is created on first use)."""


def dispatch_of(service: object) -> Dispatch | None:
    """The :class:`Dispatch` of an instance of a ``Service`` class (created once), else None."""
    cls = type(service)
    if not isinstance(cls, ServiceMeta):
        return None
    found: Dispatch | None = service.__dict__.get(_KEY)
    if found is None:
        found = service.__dict__[_KEY] = Dispatch(service)
    return found


class Dispatch:
    """The routes of one service instance, bound to it: ``resolve(subject)`` and ``handlers``."""

    def __init__(self, service: Any) -> None:
        cls = type(service)
        self.owner = cls.__name__
        self.mounted: dict[type[Any], Any] = {}
        """The instance each mounted Service class's methods run on (one per dispatch)."""
        codec = Codec(cls.converter) if cls.converter is not None else default_codec
        self.handlers: dict[str, Bound] = {r.name: Bound(r, service, codec, self.mounted)
                                           for r in cls.routes}
        matcher: Matcher[Handler] = Matcher(
            ((h.route.tokens, h) for h in self.handlers.values()),
            hostile=Unroutable(cls.__name__))
        self.resolve: Callable[[str], Handler | None] = matcher.match

    async def process(self, msg: Msg) -> Any:
        """Route one raw message to its handler and return the handler's result."""
        handler = self.resolve(msg.subject)
        if handler is None:
            error = f"no route of {self.owner} handles subject {msg.subject!r}"
            raise NoRouteError(error)
        return await handler.run(msg)


class Bound:
    """A compiled route bound to a service instance.

    ``run(msg)`` decodes the message as the handler asked and returns the handler's awaitable:
    for an async handler its own coroutine, with no wrapper on the per-message path.
    """

    __slots__ = ("arg", "batch", "name", "route", "run", "stats", "timeout")

    def __init__(self, route: CompiledRoute, service: Any, codec: Codec,
                 mounted: dict[type[Any], Any]) -> None:
        self.route = route
        self.name = route.name
        self.stats = RouteStats()
        self.timeout = route.timeout  # None: the service's timeout
        handler = route.handler
        if route.is_method:
            target = service
            if route.owner is not None and not isinstance(service, route.owner):
                target = _mounted(service, route.owner, mounted)
            call = handler.__get__(target, type(target))
        elif not inspect.isroutine(handler) and callable(getattr(handler, "process", None)):
            call = handler.process
        else:
            call = handler
        is_async = inspect.iscoroutinefunction(call) or inspect.iscoroutinefunction(
            type(call).__call__)
        arg = _argument(route, codec)  # what the handler's first parameter gets
        if route.events and route.route.batch is None and (
                route.route.key is not None or getattr(service, "key", None) is not None):
            arg = Remembered(arg)  # a keyed route: decoded once for the key and the handler
        self.arg = arg
        self.batch = None if route.route.batch is None else BatchCall(
            route.route.batch, call, arg, route.name)  # run by amebus.batch_runner
        run: Callable[[Msg], Any]
        if self.batch is not None:
            run = self.batch.run_one  # outside a served consumer: a batch of one
        elif route.with_message:
            run = lambda msg: call(arg(msg), msg)  # noqa: E731
        elif arg is _as_message:
            run = call
        else:
            run = lambda msg: call(arg(msg))  # noqa: E731
        self.run: Callable[[Msg], Awaitable[Any]] = run if is_async else _awaitable(run)
        self.run = once.wrap(self.run, route, arg)  # idempotent=, ack_sync= (amebus.once)


class Unroutable:
    """The handler of a subject no route can mean (control characters, or bytes that were not
    UTF-8): it fails as ``NoRouteError``, so the message is termed (and dead-lettered)."""

    def __init__(self, owner: str) -> None:
        self.name = "(unroutable subject)"
        self.stats = RouteStats()
        self.timeout: float | None = None
        self.owner = owner
        self.run: Callable[[Msg], Awaitable[Any]] = self._fail

    async def _fail(self, msg: Msg) -> Any:
        error = (f"no route of {self.owner} can handle subject {msg.subject!r}: it holds "
                 f"control characters or bytes that are not UTF-8")
        raise NoRouteError(error)


class Remembered:
    """A keyed route's argument: :meth:`keep` decodes a message for its key (amebus.ordering)
    and keeps the value; the handler's call right after takes it instead of decoding again.
    Any other message (one parked in between) is decoded anew."""

    __slots__ = ("decode", "msg", "value")

    def __init__(self, decode: Callable[[Msg], Any]) -> None:
        self.decode = decode
        self.msg: Msg | None = None
        self.value: Any = None

    def __call__(self, msg: Msg) -> Any:
        if msg is self.msg:
            value = self.value
            self.msg = self.value = None  # taken once: the next delivery decodes its own
            return value
        return self.decode(msg)

    def keep(self, msg: Msg) -> Any:
        """Decode ``msg`` and keep the value for the handler's call."""
        value = self.decode(msg)
        self.msg, self.value = msg, value
        return value


def _argument(route: CompiledRoute, codec: Codec) -> Callable[[Msg], Any]:
    """What the handler's first parameter receives, as a function of the message."""
    if route.event is not None:
        decode = codec.decoder(route.event)
        return lambda msg: decode(msg.data)
    if route.events:
        return _by_header({e.event_type: codec.decoder(e) for e in route.events})
    if route.takes == "payload":
        return lambda msg: msg.data
    return _as_message


def _as_message(msg: Msg) -> Msg:
    return msg


def _awaitable(run: Callable[[Msg], Any]) -> Callable[[Msg], Awaitable[Any]]:
    """Wrap a sync handler (run on the event loop); an awaitable it returns is awaited."""

    async def sync(msg: Msg) -> Any:
        result = run(msg)
        return await result if inspect.isawaitable(result) else result

    return sync


def _by_header(decoders: Mapping[str, Callable[[bytes], Any]]) -> Callable[[Msg], Any]:
    """Decode into the union member the message's event-type header names."""

    def decode(msg: Msg) -> Any:
        name = (msg.headers or {}).get(EVENT_TYPE_HEADER)
        decoder = decoders.get(name) if name is not None else None
        if decoder is None:
            msg_ = (f"message on {msg.subject!r} has {EVENT_TYPE_HEADER} {name!r}; this route "
                    f"takes {', '.join(sorted(decoders))}: publish with Event.publish, which "
                    f"sets the header")
            raise DecodeError(msg_, errors=(f"{EVENT_TYPE_HEADER}: {name!r}",),
                              size=len(msg.data))
        return decoder(msg.data)

    return decode


def _mounted(service: Any, cls: type[Any], mounted: dict[type[Any], Any]) -> Any:
    """The instance a mounted Service class's methods run on: one per serving service."""
    if cls not in mounted:
        try:
            mounted[cls] = cls()
        except TypeError as exc:
            msg = (f"{type(service).__name__} mounts {cls.__name__}, whose method routes need "
                   f"an instance, but {cls.__name__}() failed ({exc}); give it a constructor "
                   f"without required arguments, or route to functions")
            raise ConfigurationError(msg) from exc
    return mounted[cls]
