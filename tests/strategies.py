"""Shared Hypothesis strategies for the amebus tests (the profile lives in ``conftest.py``).

Valid inputs are built by construction (``.map``), never found by ``.filter``.
"""

from __future__ import annotations

import enum
import itertools
import re
import types
import typing
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import attrs
from hypothesis import strategies as st

__all__ = [
    "FORBIDDEN_CHARS",
    "LITERALS",
    "SUBJECT_BREAKERS",
    "attrs_instances",
    "grammar_tokens",
    "literal_subjects",
    "literal_tokens",
    "message_subjects",
    "message_tokens",
    "patterns",
    "prefixes",
    "regex_matches",
    "route_sets",
    "subject_tokens",
    "subjects_for",
    "subjects_near",
    "valid_tokens",
    "witness_subjects",
    "wrong_json_for",
]

# -- event subjects ----------------------------------------------------------------------------

SUBJECT_BREAKERS = ".*> \t\r\n\f\v\x00"
"""Characters that split, widen or break a published subject when they sit inside a token."""

_TEXT = st.characters(codec="utf-8")  # any encodable code point: no lone surrogates


def subject_tokens() -> st.SearchStrategy[str]:
    """Any candidate token, often hostile: empty, wildcards, dots, whitespace, NUL, Unicode."""
    hostile = st.text(st.sampled_from(SUBJECT_BREAKERS) | _TEXT, max_size=6)
    return st.sampled_from(["", "*", ">", "1.*", "a b", "a.b", "\v"]) | hostile | st.text(_TEXT)


def valid_tokens() -> st.SearchStrategy[str]:
    """Tokens an event may put in its subject: never empty, a wildcard or a breaker."""
    safe = st.characters(codec="utf-8", exclude_characters=SUBJECT_BREAKERS)
    return st.text(safe, min_size=1, max_size=12)


# -- attrs values from their fields ------------------------------------------------------------

_FIXED_OFFSETS = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(_TEXT, max_size=20),
    int: st.integers(),
    float: st.floats(allow_nan=False, allow_infinity=False),  # JSON has neither
    bool: st.booleans(),
    type(None): st.none(),
    bytes: st.binary(max_size=20),
    date: st.dates(),
    datetime: st.datetimes(timezones=st.none() | st.just(UTC) | _FIXED_OFFSETS),
}


def _for_type(tp: Any) -> st.SearchStrategy[Any]:
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from(tp)
    if isinstance(tp, type) and attrs.has(tp):
        return attrs_instances(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([_for_type(arg) for arg in args])
    if origin is list:
        return st.lists(_for_type(args[0]), max_size=4)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(_for_type(args[0]), max_size=4).map(tuple)
    if origin is frozenset:
        return st.frozensets(_for_type(args[0]), max_size=4)
    if origin is dict and args[0] is str:
        return st.dictionaries(_SCALARS[str], _for_type(args[1]), max_size=4)
    msg = f"no strategy for {tp!r}; add it to tests/strategies.py"
    raise NotImplementedError(msg)


def attrs_instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of the attrs class ``cls``, each field drawn from a strategy for its type."""
    attrs.resolve_types(cls)
    fields = {f.name: _for_type(f.type) for f in attrs.fields(cls) if f.init}
    return st.builds(cls, **fields)


def wrong_json_for(tp: type[Any]) -> st.SearchStrategy[Any]:
    """JSON values whose type is not ``tp`` (``str``, ``int``, ``float`` or ``bool``)."""
    every = {
        str: st.text(_TEXT, max_size=5),
        int: st.integers(),
        float: st.floats(allow_nan=False, allow_infinity=False),
        bool: st.booleans(),
        type(None): st.none(),
        list: st.lists(st.integers(), max_size=2),
        dict: st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    }
    accepted = {float: {float, int}}.get(tp, {tp})
    return st.one_of([strategy for kind, strategy in every.items() if kind not in accepted])


# -- patterns, routes and the subjects they match ----------------------------------------------
# A small alphabet so that patterns and subjects collide often. ``a*`` and ``->`` are literals
# (wildcards are whole tokens only); message subjects sometimes hold a whole ``*`` or ``>``
# token, which is a literal in a subject.

LITERALS = ("a", "b", "c", "ab", "a*", "->", "é")
"""Literal tokens: few, so they collide; ``a*`` and ``->`` are literals despite their chars."""
FORBIDDEN_CHARS = (" ", "\t", "\r", "\n", "\f", "\v", "\x00")
"""The characters the grammar forbids in a token, besides ``.``."""


def literal_tokens() -> st.SearchStrategy[str]:
    """A token that is never a wildcard, from the small alphabet."""
    return st.sampled_from(LITERALS)


def grammar_tokens() -> st.SearchStrategy[str]:
    """Any valid non-wildcard token: any text without ``.``, whitespace or NUL (``a*`` too)."""
    chars = st.characters(codec="utf-8", exclude_characters="".join(FORBIDDEN_CHARS) + ".")
    text = st.text(chars, min_size=1, max_size=8)
    return text.map(lambda t: t + "_" if t in ("*", ">") else t)


def message_tokens() -> st.SearchStrategy[str]:
    """A token of a message subject: mostly literals, one in four a literal ``*`` or ``>``."""
    return st.one_of(literal_tokens(), literal_tokens(), literal_tokens(),
                     st.sampled_from(("*", ">")))


def message_subjects(max_tokens: int = 4) -> st.SearchStrategy[str]:
    """A valid message subject, which may hold ``*`` and ``>`` tokens (literals there)."""
    return st.lists(message_tokens(), min_size=1, max_size=max_tokens).map(".".join)


def literal_subjects(max_tokens: int = 4) -> st.SearchStrategy[str]:
    """A valid subject without wildcard tokens: one that can be published by an Event."""
    return st.lists(literal_tokens(), min_size=1, max_size=max_tokens).map(".".join)


def _with_tail(parts: tuple[list[str], bool]) -> str:
    body, tail = parts
    return ".".join([*body, ">"] if tail or not body else body)


def patterns(max_tokens: int = 4) -> st.SearchStrategy[str]:
    """A valid pattern: literals and ``*`` tokens, sometimes ending with ``>``."""
    body = st.lists(st.one_of(literal_tokens(), st.just("*")), max_size=max_tokens - 1)
    return st.tuples(body, st.booleans()).map(_with_tail)


def prefixes(max_tokens: int = 2) -> st.SearchStrategy[str]:
    """A valid router prefix: literals and ``*`` tokens, never ``>``."""
    token = st.one_of(literal_tokens(), st.just("*"))
    return st.lists(token, min_size=1, max_size=max_tokens).map(".".join)


def route_sets(min_size: int = 1, max_size: int = 8, max_tokens: int = 4
               ) -> st.SearchStrategy[list[str]]:
    """Distinct patterns, in generation order (a service's routes, before compilation)."""
    return st.lists(patterns(max_tokens), min_size=min_size, max_size=max_size, unique=True)


def _fill(token: str) -> st.SearchStrategy[list[str]]:
    if token == "*":
        return message_tokens().map(lambda t: [t])
    if token == ">":
        return st.lists(message_tokens(), min_size=1, max_size=3)
    return st.just([token])


def subjects_for(pattern: str) -> st.SearchStrategy[str]:
    """A subject ``pattern`` matches: each wildcard filled in with generated tokens."""
    parts = st.tuples(*(_fill(token) for token in pattern.split(".")))
    return parts.map(lambda filled: ".".join(itertools.chain.from_iterable(filled)))


def subjects_near(route_set: list[str], max_tokens: int = 5) -> st.SearchStrategy[str]:
    """A subject that often, not always, matches one of ``route_set``."""
    return st.one_of(*(subjects_for(pattern) for pattern in route_set),
                     message_subjects(max_tokens))


# -- oracles: the subject rules by another algorithm, to check amebus.subjects against ---------

def regex_matches(pattern: str, subject: str) -> bool:
    """Does ``pattern`` match ``subject``, by regex: ``*`` is ``[^.]+``, ``>`` is ``.+``."""
    parts = [{"*": r"[^.]+", ">": r".+"}.get(token, re.escape(token))
             for token in pattern.split(".")]
    return re.fullmatch(r"\.".join(parts), subject, re.DOTALL) is not None


def witness_subjects(*pattern_texts: str) -> Iterator[str]:
    """Every subject whose tokens are, position by position, a literal some pattern has at that
    position or a token none of them has, from one token up to one more than the longest.

    Complete for every question about which of the patterns match: in any subject, replace each
    token no pattern has as a literal at its position by that other token, and cut it to that
    length; no pattern changes its answer. So "every subject matched by A is matched by B" is
    decided by checking these subjects only.
    """
    token_lists = [text.split(".") for text in pattern_texts]
    used = {token for tokens in token_lists for token in tokens}
    other = next(f"w{n}" for n in itertools.count() if f"w{n}" not in used)
    longest = max(len(tokens) for tokens in token_lists)
    for length in range(1, longest + 2):
        choices = []
        for index in range(length):
            literal = {tokens[index] for tokens in token_lists
                       if index < len(tokens) and tokens[index] not in ("*", ">")}
            choices.append([*sorted(literal), other])
        for combination in itertools.product(*choices):
            yield ".".join(combination)
