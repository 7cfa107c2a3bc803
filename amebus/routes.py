"""One route: the ``Route`` a service body declares and the ``CompiledRoute`` it becomes
under its routers' prefixes (:mod:`amebus.routing` compiles them into a service).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from amebus.batching import Batch, check_batch
from amebus.errors import ConfigurationError
from amebus.handlers import check_handler, describe, signature
from amebus.idempotency import Idempotent, check_idempotent
from amebus.ordering import Key, check_key
from amebus.subjects import validate_pattern

__all__ = ["CompiledRoute", "Route"]


class Route:
    """Map a subject pattern to a handler.

    ``Route("order.paid.*", handler)`` calls ``handler`` as it is (a function, or an object with
    an async ``process`` method). Used as a decorator on a method in a ``Service`` body,
    ``@Route("order.paid.*")`` calls the method bound to the serving instance. The pattern may
    be an ``Event`` class: its static ``subject`` or declared ``subject_pattern`` is used.

    Args:
        pattern: a subject pattern (``*`` one token, ``>`` the rest), or an Event class.
        handler: the handler; omit it to use the Route as a method decorator.
        timeout: seconds the handler may run before it is cancelled and retried.
        idempotent: ``True`` or an ``Idempotent(key=..., bucket=..., ttl=...)``: a message
            this route handled is acked, not run again, when it is delivered again
            (:mod:`amebus.idempotency`).
        ack_sync: ack with the server's confirmation (a lost ack fails the delivery).
        batch: ``Batch(size=100, wait=0.5)``, or a whole number (the size, waiting 0.5s): the
            handler receives a list of up to ``size`` events and returns None or one outcome
            per event (:mod:`amebus.batching`, ``docs/batches.md``).
        key: run messages with the same key one at a time, in stream order: a subject token
            position (``key=2`` for the id in ``orders.*.<id>``), an event attribute name or
            a function of the event (docs/ordering.md); None: the service's ``key``.
    """

    __slots__ = ("ack_sync", "batch", "bound_as", "event", "handler", "idempotent", "is_method",
                 "key", "pattern", "timeout", "tokens")

    def __init__(self, pattern: str | type[Any], handler: Any = None, *,
                 timeout: float | None = None, idempotent: bool | Idempotent = False,
                 ack_sync: bool = False, batch: Batch | int | None = None,
                 key: Key | None = None) -> None:
        self.event: type[Any] | None = None
        if isinstance(pattern, type):
            self.event = pattern
            pattern = _event_pattern_text(pattern)
        self.tokens = validate_pattern(pattern)
        self.pattern = pattern
        self.handler: Any = None
        self.is_method = False
        self.timeout = timeout
        self.idempotent = check_idempotent(idempotent, f"Route({pattern!r})")
        self.ack_sync = bool(ack_sync)
        self.batch = check_batch(batch, f"Route({pattern!r})")
        if self.batch is not None and (self.idempotent is not None or self.ack_sync):
            msg = (f"Route({pattern!r}) batch={batch!r} cannot be idempotent or ack_sync; "
                   f"drop idempotent=/ack_sync=, or make it a per-message route")
            raise ConfigurationError(msg)
        check_key(key, f"Route({pattern!r})")
        self.key = key
        self.bound_as: list[str] = []
        """The attribute names this Route was given in class bodies (by ``__set_name__``)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, int | float) or not 0 < timeout < float("inf")):
            msg = (f"Route({pattern!r}) timeout={timeout!r}: give a number of seconds above 0 "
                   f"(finite, like 5.0), or None for the service's timeout")
            raise ConfigurationError(msg)
        if handler is not None:
            self.handler = check_handler(handler, f"Route({pattern!r})")

    def __call__(self, func: Callable[..., Any]) -> Route:
        """Decorate a method of a Service body; the class attribute becomes this Route."""
        if self.handler is not None:
            msg = (f"Route({self.pattern!r}) already has the handler {self.handler!r}; "
                   f"use either Route(pattern, handler) or @Route(pattern), not both")
            raise ConfigurationError(msg)
        if not inspect.isfunction(func):
            msg = (f"@Route({self.pattern!r}) decorates {func!r}, which is not a function; "
                   f"decorate a plain (async) method, or pass the object as Route(pattern, obj)")
            raise ConfigurationError(msg)
        self.handler = func
        self.is_method = True
        return self

    def __set_name__(self, owner: type[Any], name: str) -> None:
        """Record the attribute name (``ServiceMeta`` refuses a Route bound under two names;
        raising here would reach the user wrapped in a RuntimeError on Python 3.11)."""
        if name not in self.bound_as:
            self.bound_as.append(name)

    def __get__(self, instance: object, owner: type[Any] | None = None) -> Any:
        """On an instance, a method route reads as the bound method (handy in unit tests)."""
        if instance is None or not self.is_method:
            return self
        return self.handler.__get__(instance, owner)

    def __repr__(self) -> str:
        return f"Route({self.pattern!r}, {describe(self.handler)})"


class CompiledRoute:
    """One route of a compiled service: full pattern, attribute path and how to call it.

    Attributes:
        pattern: the full pattern, router prefixes joined (``order.paid.*``).
        name: the attribute path (``order.paid``).
        handler: the handler as declared (a function, a method, or a processor object).
        takes: what the first parameter receives: ``"event"``, ``"message"`` or ``"payload"``.
        event: the Event class the payload decodes into, when ``takes == "event"``.
        events: every Event class the route accepts; more than one when the handler is
            annotated with a union, told apart by the ``Amebus-Event-Type`` header.
        with_message: the handler takes the raw message as a second argument.
        owner: for a method route of a mounted Service class, that class (its methods run on
            an instance of it, made with no arguments); None for the service's own routes.
    """

    __slots__ = ("event", "events", "handler", "is_method", "name", "owner", "pattern", "route",
                 "takes", "timeout", "tokens", "with_message")

    def __init__(self, route: Route, tokens: tuple[str, ...], name: str,
                 localns: Mapping[str, Any] | None = None, owner: type[Any] | None = None,
                 is_method: bool | None = None) -> None:
        self.route = route
        self.owner = owner
        self.tokens = tokens
        self.pattern = ".".join(tokens)
        self.name = name
        self.handler = route.handler
        self.is_method = route.is_method if is_method is None else is_method
        self.timeout = route.timeout
        self.takes, self.events, self.with_message = signature(
            route.handler, is_method=self.is_method, event=route.event, pattern=self.pattern,
            name=name, localns=localns or {}, batch=route.batch is not None)
        self.event = self.events[0] if len(self.events) == 1 else None

    def __repr__(self) -> str:
        return f"<route {self.name} {self.pattern!r} -> {describe(self.handler)}>"


def _event_pattern_text(event: type[Any]) -> str:
    from amebus.events import event_pattern, is_event_class

    if not is_event_class(event):
        msg = (f"Route({event!r}): a class pattern must be an amebus.Event subclass; "
               f"pass a subject pattern string instead")
        raise ConfigurationError(msg)
    tokens = event_pattern(event)
    if tokens is None:
        msg = (f"Route({event.__qualname__}): the event computes its subject and declares no "
               f"subject_pattern; add `subject_pattern = 'order.paid.*'` to the event class, "
               f"or pass the pattern: Route('order.paid.*', handler)")
        raise ConfigurationError(msg)
    return ".".join(tokens)
