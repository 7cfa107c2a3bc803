"""Shared Hypothesis strategies for the amebus tests (the profile lives in ``conftest.py``).

Valid inputs are built by construction (``.map``), never found by ``.filter``. The second part
holds the reliability suite's: garbage payloads, odd headers, subject tokens; whether a
payload is a valid ``Order`` is decided afterwards by :func:`is_valid_order`, an oracle written
with ``json`` and ``type()`` checks rather than amebus's cattrs converter.
"""

from __future__ import annotations

import enum
import itertools
import json
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
    "MAX_PAYLOAD",
    "SUBJECT_BREAKERS",
    "attrs_instances",
    "codec_event_classes",
    "codec_field_types",
    "grammar_tokens",
    "headers",
    "is_valid_order",
    "literal_subjects",
    "literal_tokens",
    "mentions",
    "message_subjects",
    "message_tokens",
    "messages",
    "patterns",
    "prefixes",
    "regex_matches",
    "route_sets",
    "subject_tokens",
    "subjects_for",
    "subjects_near",
    "tokens",
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


# -- the reliability suite: payloads, headers, tokens, hostile text ---------------------

MAX_PAYLOAD = 64 * 1024
"""The server's max_payload in the poison scenario."""

_json_scalars = (st.none() | st.booleans() | st.integers()
                 | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=8,
)
_orders = st.fixed_dictionaries(
    {"id": st.text(max_size=30), "amount": st.integers()},
    optional={"note": st.text(max_size=60), "unknown": json_values},
)


def _dump(obj: Any, ascii_only: bool) -> bytes:
    return json.dumps(obj, ensure_ascii=ascii_only).encode()


good = st.builds(_dump, _orders, st.booleans())
"""Valid Order payloads (unknown keys included: the codec ignores them)."""

wrong_types = st.builds(
    _dump,
    st.fixed_dictionaries({"id": json_values, "amount": json_values},
                          optional={"note": json_values}),
    st.booleans(),
)
not_objects = st.builds(_dump, json_values, st.booleans())
missing = st.builds(_dump, st.fixed_dictionaries({}, optional={"id": st.text(max_size=5),
                                                              "note": st.text(max_size=5)}),
                    st.just(True))
truncated = st.builds(lambda data, cut: data[: cut % max(len(data), 1)], good, st.integers(0))
_BAD_UTF8 = [b"\xff", b"\xfe", b"\xc3\x28", b"\xa0\xa1", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
             b"\x80", b"\xc0\xaf"]
invalid_utf8 = st.builds(lambda data, at, bad: data[: at % (len(data) + 1)] + bad
                         + data[at % (len(data) + 1):],
                         good, st.integers(0), st.sampled_from(_BAD_UTF8))
constants = st.sampled_from([b'{"id": "a", "amount": NaN}', b'{"id": "a", "amount": Infinity}',
                             b'{"id": "a", "amount": -Infinity}', b'{"id": NaN, "amount": 1}'])
deep = st.builds(lambda depth, obj: (b'{"id": "d", "amount": ' + b"[" * depth + b"]" * depth
                                     + b"}") if obj else b"[" * depth + b"]" * depth,
                 st.integers(2_000, MAX_PAYLOAD // 2 - 100), st.booleans())
huge_ints = st.builds(lambda digits: b'{"id": "h", "amount": 1' + b"0" * digits + b"}",
                      st.integers(4_300, 20_000))
random_bytes = st.binary(max_size=300)
_small = st.one_of(good, good, wrong_types, not_objects, missing, truncated, invalid_utf8,
                   constants, deep, huge_ints, random_bytes)

_HUGE_MIN, _HUGE_MAX = MAX_PAYLOAD - 3_000, MAX_PAYLOAD - 100
huge_good = st.builds(lambda n: _dump({"id": "big", "amount": 1, "note": "x" * n}, True),
                      st.integers(_HUGE_MIN - 40, _HUGE_MAX - 40))
huge_bad = st.builds(lambda pattern, n: (pattern * (n // len(pattern) + 1))[:n],
                     st.binary(min_size=1, max_size=16), st.integers(_HUGE_MIN, _HUGE_MAX))
"""Payloads a few hundred bytes under max_payload: stored, but their dead-letter copy (the
payload plus amebus's headers) may not fit."""

_ODD_NAMES = ["Amebus-Event-Type", "Amebus-Dead-Letter", "Amebus-Original-Sequence", "Status",
              "Description", "Content-Type", "X-Empty"]
_names = st.from_regex(r"[A-Za-z][A-Za-z0-9_-]{0,15}", fullmatch=True).map(lambda n: "X-" + n)
_values = st.one_of(
    st.text(max_size=40),  # any code point: controls, NUL, CR/LF (nats-py blanks those)
    st.sampled_from(["", " ", "  padded  ", "a:b:c", "409", "100", "Consumer Deleted",
                     "\u202etxt", "\ufeff", "é" * 30, "NATS/1.0 503", "\t"]),
)
headers = st.dictionaries(_names | st.sampled_from(_ODD_NAMES), _values, min_size=1,
                          max_size=4) | st.none()
"""Header maps with odd names and values; never a ``Nats-`` header (those steer the server)."""

messages = st.one_of(
    st.tuples(_small, headers),
    st.tuples(huge_good | huge_bad, st.none()),
)
"""(payload, headers) pairs: mostly small garbage and good orders, sometimes a near-limit one."""


def _reject_constant(name: str) -> Any:
    msg = f"{name} is not JSON"
    raise ValueError(msg)


def is_valid_order(payload: bytes) -> bool:
    """True if ``payload`` is an object with a str ``id``, an int ``amount`` and, if present,
    a str ``note``, in strict UTF-8 JSON (no NaN or Infinity)."""
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return False
    if type(obj) is not dict:
        return False
    if type(obj.get("id")) is not str or type(obj.get("amount")) is not int:
        return False
    return "note" not in obj or type(obj["note"]) is str


_token_chars = st.characters(codec="utf-8") | st.sampled_from(
    [".", " ", "\t", "\r", "\n", "\f", "\v", "\x00", "*", ">", "\x85", "\u2028", "$", ":"])
tokens = st.text(_token_chars, max_size=8)
"""Event field values meant to become subject tokens, special characters favoured."""


# -- hostile text (issue 11) ------------------------------------------------------------------

_hostile_chars = st.characters(categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Zs", "Co", "Cn")) | \
    st.sampled_from(["\ud800", "\udfff", "\x00", "\x1b", "\r", "\n", "\v", "\x85", "\u202e",
                     "\ufeff", "%", "{", "\\"]) | st.characters()
_hostile_parts = st.text(_hostile_chars, max_size=40) | st.sampled_from(
    ["\x1b[2J", "\r\n2026-01-01 CRITICAL forged", "%s%(x)s{}", "\ud800\udc00\udbff"])
hostile_text = st.builds(lambda parts: "".join(parts), st.lists(_hostile_parts, max_size=4)) | \
    st.builds(lambda part, n: part * n, st.text(_hostile_chars, min_size=1, max_size=4),
              st.integers(100, 2_000))
"""Text a JSON payload can carry into a handler's reason or exception: lone surrogates,
control and format characters, line breaks, %-formats, sometimes thousands of characters."""

failure_kinds = st.sampled_from(["term", "raise", "str-raises", "str-not-str", "evil-name",
                                 "emit"])
"""How a hostile order fails: ``raise Term(f"... {note}")``, an exception carrying the note,
one whose ``__str__`` raises or returns a non-str, one whose class name holds the note, or a
result event whose subject token is the note's length near the control-line limit."""

subject_lengths = st.integers(3_900, 4_200)
"""Subject lengths around nats-server's 4096-byte control-line limit."""


def hostile_order(kind: str, note: str, length: int) -> bytes:
    """The JSON of a valid order carrying ``note`` (surrogates as \\u escapes)."""
    return json.dumps({"id": f"{kind}:{length}", "amount": 1, "note": note},
                      ensure_ascii=True).encode()


# -- generated event classes and payloads for the codec's fast path ------------------------------
# A class is drawn as a tree of field types; payloads are valid by construction, then noised:
# any value may be replaced by a random JSON value, keys dropped or added, the bytes cut.

_class_names = itertools.count()
_fast_leaves = st.sampled_from([str, int, float, bool]) | st.builds(
    lambda values: enum.Enum(f"E{next(_class_names)}", {f"M{i}": v for i, v in enumerate(values)}),
    st.lists(st.text(max_size=3), min_size=1, max_size=3, unique=True)
    | st.lists(st.integers(-3, 3), min_size=1, max_size=3, unique=True))


def _fast_class(fields: list[tuple[Any, bool]], base: type[Any] | None = None) -> type[Any]:
    spec = {f"f{i}": attrs.field(type=tp, default=None) if optional else attrs.field(type=tp)
            for i, (tp, optional) in enumerate(fields)}
    name = f"Gen{next(_class_names)}"
    if base is None:
        return attrs.make_class(name, spec, frozen=True)
    return attrs.make_class(name, spec, bases=(base,), frozen=True,
                            class_body={"subject": f"gen.{name}"})


def _field_types(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[list[tuple[Any, bool]]]:
    optional = inner.map(lambda tp: (typing.Optional[tp], True))  # noqa: UP045 - a runtime type
    return st.lists(inner.map(lambda tp: (tp, False)) | optional, min_size=1, max_size=5).map(
        lambda fields: sorted(fields, key=lambda field: field[1]))  # defaults last


fast_field_types = st.recursive(
    _fast_leaves,
    lambda inner: (inner.map(lambda tp: list[tp]) | inner.map(lambda tp: dict[str, tp])
                   | _field_types(inner).map(_fast_class)),
    max_leaves=6,
)
"""Field types the fast path takes: scalars, enums, optionals, lists, dicts, nested attrs."""


def fast_event_classes(base: type[Any]) -> st.SearchStrategy[type[Any]]:
    """Frozen attrs subclasses of ``base`` (``amebus.Event``) with `fast_field_types` fields."""
    return _field_types(fast_field_types).map(lambda fields: _fast_class(fields, base))


codec_field_types = st.recursive(
    _fast_leaves | st.sampled_from([datetime, date]),
    lambda inner: (inner.map(lambda tp: list[tp]) | inner.map(lambda tp: dict[str, tp])
                   | _field_types(inner).map(_fast_class)),
    max_leaves=6,
)
"""`fast_field_types` and ``datetime``/``date`` leaves: a class holding one takes cattrs."""


def codec_event_classes(base: type[Any]) -> st.SearchStrategy[type[Any]]:
    """Frozen attrs subclasses of ``base`` with `codec_field_types` fields."""
    return _field_types(codec_field_types).map(lambda fields: _fast_class(fields, base))


def mentions(tp: Any, leaves: tuple[type[Any], ...]) -> bool:
    """Whether the type ``tp`` (an attrs class, a generic, a leaf) holds one of ``leaves``."""
    if tp in leaves:
        return True
    if isinstance(tp, type) and attrs.has(tp):
        return any(mentions(f.type, leaves) for f in attrs.fields(tp))
    return any(mentions(arg, leaves) for arg in typing.get_args(tp))


def _lookalike(value: Any, how: int) -> Any:
    # a value a lax decoder would coerce: "1" for 1, 1.0 for 1, 1 for true, "a" for ["a"]
    if how == 0:
        return (json.dumps(value) if not isinstance(value, str)
                else value.isascii() and value.isdigit() and int(value))
    if how == 1 and isinstance(value, int | bool):
        return float(value) if not isinstance(value, bool) else int(value)
    return [value] if how == 2 else {"value": value}


def _json_for(tp: Any, noise: bool) -> st.SearchStrategy[Any]:
    if noise:
        return json_values | st.builds(_lookalike, _json_for(tp, False), st.integers(0, 3)) | \
            st.builds(_lookalike, _json_for(tp, False), st.integers(0, 1))
    if tp in (str, int, bool):
        return _SCALARS[tp] if tp is not str else st.text(max_size=8)
    if tp is float:
        return st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**20, 10**20)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return st.sampled_from([member.value for member in tp])
    if tp in (datetime, date):  # as amebus encodes them: isoformat()
        return _SCALARS[tp].map(tp.isoformat) | st.sampled_from(
            ["2026-01-02T03:04:05Z", "2026-01-02", "2026-01-02T03:04:05.123456789+01:00",
             "20260102T030405", "2026-13-01", "1"])
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return st.none() | fast_payload_values(args[0])
    if origin is list:
        return st.lists(fast_payload_values(args[0]), max_size=3)
    if origin is dict:
        return st.dictionaries(st.text(max_size=4), fast_payload_values(args[1]), max_size=3)
    fields = {f.name: fast_payload_values(f.type) for f in attrs.fields(tp)}
    required = {f.name for f in attrs.fields(tp) if f.default is attrs.NOTHING}
    return st.fixed_dictionaries({k: v for k, v in fields.items() if k in required},
                                 optional={k: v for k, v in fields.items() if k not in required})


def fast_payload_values(tp: Any) -> st.SearchStrategy[Any]:
    """JSON values for a field of type ``tp``: mostly valid, sometimes any JSON value."""
    return st.deferred(lambda: st.one_of(*[_json_for(tp, False)] * 4, _json_for(tp, True)))


def _noised(obj: Any, extra: dict[str, Any], drop: int) -> Any:
    if isinstance(obj, dict) and obj:
        obj = {k: v for i, (k, v) in enumerate(obj.items()) if i != drop % (len(obj) + 1)}
    return {**obj, **extra} if isinstance(obj, dict) else obj


def fast_payloads(cls: type[Any]) -> st.SearchStrategy[bytes]:
    """Payloads for ``cls``: valid ones, noised ones (keys dropped or added), cut bytes."""
    whole = st.builds(_noised, _json_for(cls, False),
                      st.dictionaries(st.text(max_size=4), json_values, max_size=2),
                      st.just(-1) | st.just(-1) | st.integers(0, 8))
    dumped = st.builds(_dump, whole, st.booleans())
    return st.one_of(*[dumped] * 5, st.builds(
        lambda data, cut: data[: cut % max(len(data), 1)], dumped, st.integers(0)))
