"""Declarative routes: ``Route`` and ``Router`` class attributes, compiled by ``ServiceMeta``.

The metaclass walks the MRO, flattens nested routers under their prefixes, checks everything
and builds a :class:`~amebus.matcher.Matcher` once, when the class is created.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from amebus.batching import check_sizes
from amebus.errors import ConfigurationError
from amebus.matcher import Matcher
from amebus.ordering import check_keys
from amebus.routes import CompiledRoute, Route
from amebus.subjects import join, specificity, validate_pattern

__all__ = ["CompiledRoute", "Route", "Router", "ServiceMeta", "durable_name"]

_RESERVED = frozenset({"routes", "resolve", "filter_subjects", "serve", "process"})


class Router:
    """Nest routes, routers and mounted Service classes under a subject prefix.

    >>> order = Router("order", paid=Route("paid", print), cancelled=Route("cancelled", print))

    The prefix may hold ``*`` but not ``>``. ``Router("", ...)`` groups without a prefix.
    A Router may be mounted in several services and under several prefixes.
    """

    __slots__ = ("members", "prefix", "tokens")

    def __init__(self, prefix: str, /, **members: Route | Router | type[Any]) -> None:
        self.prefix = prefix
        self.tokens = validate_pattern(prefix, allow_tail=False) if prefix else ()
        for key, member in members.items():
            if not isinstance(member, (Route, Router, ServiceMeta)):
                msg = (f"Router({prefix!r}) member {key}={member!r} is not a Route, Router or "
                       f"Service class; wrap a handler as {key}=Route('pattern', handler)")
                raise ConfigurationError(msg)
        self.members: Mapping[str, Route | Router | type[Any]] = dict(members)

    def __repr__(self) -> str:
        return f"Router({self.prefix!r}, {', '.join(self.members)})"


class ServiceMeta(type):
    """Collects Route and Router attributes along the MRO and compiles them into a matcher.

    A subclass inherits routes, overrides one by redefining its attribute name and drops one
    by setting it to ``None``. The library's own ``Service`` base compiles to no routes.
    """

    routes: tuple[CompiledRoute, ...]
    filter_subjects: tuple[str, ...]
    _matcher: Matcher[CompiledRoute]

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any],
                **kwargs: Any) -> ServiceMeta:
        _refuse_reserved(name, namespace)
        _refuse_hiding(name, bases, namespace)
        _refuse_missing_handlers(name, namespace)
        localns = sys._getframe(1).f_locals  # the scope of the class statement, for hints
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)  # runs __set_name__
        _refuse_bound_twice(name, namespace)
        compiled = _compile(name, _declared(cls), localns)
        cls.routes = tuple(sorted(compiled, key=lambda r: (specificity(r.tokens), r.tokens)))
        cls._matcher = Matcher((r.tokens, r) for r in compiled)
        cls.filter_subjects = _filter_subjects(r.tokens for r in compiled)
        check_sizes(name, (r.route.batch for r in compiled), getattr(cls, "max_ack_pending", 0))
        check_keys(name, compiled, getattr(cls, "key", None))  # amebus.ordering
        return cls

    def resolve(cls, subject: str) -> CompiledRoute | None:
        """Return the route that handles ``subject`` (the most specific match), or None."""
        return cls._matcher.match(subject)


def durable_name(cls: type[Any], given: str | None = None) -> str:
    """The durable consumer's name: ``given``, else the class's ``durable``, else its name."""
    return given or getattr(cls, "durable", None) or cls.__name__


def _refuse_reserved(name: str, namespace: dict[str, Any]) -> None:
    """A route may not take a name the Service class itself uses."""
    for attr in _RESERVED & namespace.keys():
        if isinstance(namespace[attr], (Route, Router)):
            msg = (f"{name}.{attr} is a reserved Service name; give the route another "
                   f"attribute name")
            raise ConfigurationError(msg)


def _refuse_hiding(name: str, bases: tuple[type, ...], namespace: dict[str, Any]) -> None:
    """A route may only replace an inherited route, and a plain attribute may not hide one."""
    for attr, value in namespace.items():
        inherited = [vars(k)[attr] for b in bases for k in b.__mro__ if attr in vars(k)]
        plain = [v for v in inherited if not isinstance(v, (Route, Router, type(None)))]
        if isinstance(value, (Route, Router)) and inherited and (
                plain or all(v is None for v in inherited)):
            msg = (f"{name}.{attr} = {value!r} would hide the inherited {attr!r} "
                   f"({(plain or inherited)[0]!r}); give the route another attribute name")
            raise ConfigurationError(msg)
    for attr, value in namespace.items():
        hidden = next((vars(k)[attr] for b in bases for k in b.__mro__
                       if attr in vars(k)), None)
        if isinstance(hidden, Route) and callable(value) and not isinstance(value, Route):
            msg = (f"{name}.{attr} overrides the inherited route {hidden!r} with a plain "
                   f"{type(value).__name__}; decorate it with @Route({hidden.pattern!r}) "
                   f"to keep the route, or set `{attr} = None` to drop it")
            raise ConfigurationError(msg)


def _refuse_missing_handlers(owner: str, namespace: dict[str, Any]) -> None:
    for attr, value in namespace.items():
        if isinstance(value, Route) and value.handler is None:
            msg = (f"{owner}.{attr} = {value!r} has no handler; pass one as "
                   f"Route(pattern, handler) or use @Route(pattern) on a method")
            raise ConfigurationError(msg)


def _refuse_bound_twice(owner: str, namespace: dict[str, Any]) -> None:
    """One Route object per attribute (``bound_as`` was filled by ``Route.__set_name__``)."""
    for value in namespace.values():
        if isinstance(value, Route) and len(value.bound_as) > 1:
            first, second = value.bound_as[:2]
            msg = (f"{owner}: the same {value!r} is bound as both {first!r} and {second!r}; "
                   f"create one Route object per attribute")
            raise ConfigurationError(msg)


def _declared(cls: type[Any]) -> dict[str, tuple[Route | Router, str]]:
    """Every Route and Router along the MRO by attribute name (``None`` drops an inherited
    one), with the qualified name of the class that declared it."""
    declared: dict[str, tuple[Route | Router, str]] = {}
    for klass in reversed(cls.__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, (Route, Router)):
                declared[attr] = (value, klass.__qualname__)
            elif value is None:
                declared.pop(attr, None)
    return declared


def _defined_in(handler: Any, home: str) -> bool:
    """A function written in the body of the class ``home``: a method, even when it is
    placed in a Route or Router instead of being decorated (``Route("paid", _on_paid)``)."""
    return (inspect.isfunction(handler) and handler.__name__ != "<lambda>"
            and handler.__qualname__ == f"{home}.{handler.__name__}")


def _absolute(route: CompiledRoute) -> bool:
    """A route of a mounted Service that decodes events declaring their own subjects: an
    event's subject is absolute, so the route keeps its pattern under the mount's prefix."""
    from amebus.events import event_pattern

    return bool(route.events) and all(event_pattern(e) is not None for e in route.events)


_Flat = tuple[tuple[str, ...], str, Route, "type[Any] | None", bool]


def _flatten(prefix: tuple[str, ...], name: str, member: Route | Router | type[Any], home: str
             ) -> Iterator[_Flat]:
    if isinstance(member, Route):
        if member.handler is None:
            msg = f"route {name} = {member!r} has no handler; give it one"
            raise ConfigurationError(msg)
        method = member.is_method or _defined_in(member.handler, home)
        yield prefix + member.tokens, name, member, None, method
    elif isinstance(member, Router):
        for key, child in member.members.items():
            yield from _flatten(prefix + member.tokens, f"{name}.{key}", child, home)
    else:
        for route in member.routes:
            owner = route.owner or (member if route.is_method else None)
            tokens = route.tokens if _absolute(route) else prefix + route.tokens
            yield tokens, f"{name}.{route.name}", route.route, owner, route.is_method


def _compile(owner: str, declared: Mapping[str, tuple[Route | Router, str]],
             localns: Mapping[str, Any]) -> list[CompiledRoute]:
    by_pattern: dict[tuple[str, ...], CompiledRoute] = {}
    for attr, (member, home) in declared.items():
        for tokens, name, route, mounted, method in _flatten((), attr, member, home):
            if tokens[-1:] == (">",) and ">" in tokens[:-1]:
                validate_pattern(join(*tokens))  # raises with the full pattern quoted
            other = by_pattern.get(tokens)
            if other is not None:
                msg = (f"{owner}: routes {other.name!r} and {name!r} both have the pattern "
                       f"{other.pattern!r}; every pattern needs exactly one route: remove one, "
                       f"or drop the inherited one with `{other.name.split('.')[0]} = None`")
                raise ConfigurationError(msg)
            by_pattern[tokens] = CompiledRoute(route, tokens, name, localns, mounted, method)
    return list(by_pattern.values())


def _filter_subjects(patterns: Iterator[tuple[str, ...]]) -> tuple[str, ...]:
    """The patterns that no other pattern covers: the server refuses overlapping filters.

    Each pattern looks for a coverer in a trie of all of them (literal, ``*`` or ``>`` steps),
    not against every other pattern (quadratic: seconds for 10,000 routes; this: milliseconds).
    """
    unique = set(patterns)
    trie: dict[str, Any] = {}
    for pattern in unique:
        node = trie
        for token in pattern:
            node = node.setdefault(token, {})
        node[""] = True  # no token is empty: marks the end of a pattern
    kept = [p for p in unique if not _covered(trie, p, 0, True)]
    return tuple(sorted(".".join(p) for p in kept))


def _covered(node: dict[str, Any], pattern: tuple[str, ...], index: int, same: bool) -> bool:
    """True if a pattern of the trie below ``node``, other than ``pattern``, covers it."""
    if index == len(pattern):
        return "" in node and not same
    token = pattern[index]
    if ">" in node and not (same and token == ">"):
        return True
    if token != ">" and "*" in node and _covered(node["*"], pattern, index + 1,
                                                 same and token == "*"):
        return True
    return token not in ("*", ">") and token in node and _covered(node[token], pattern,
                                                                   index + 1, same)
