"""Hypothesis strategies of the reliability suite: garbage payloads, odd headers, subject tokens.

Every payload strategy builds its bytes directly (``.map``, no ``.filter``); whether a payload
is a valid ``Order`` is decided afterwards by :func:`is_valid_order`, an oracle written with
``json`` and ``type()`` checks rather than amebus's cattrs converter.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

__all__ = ["MAX_PAYLOAD", "headers", "is_valid_order", "messages", "tokens"]

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
