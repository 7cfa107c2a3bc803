"""The codec's fast path (msgspec straight into the attrs class) against its definition (cattrs).

The differential property: over generated event classes and payloads, the fast path returns an
object equal to the cattrs path's, or both refuse with the same DecodeError message; classes
with datetime or date fields (decoded by cattrs whole) and encode-then-decode round trips too.
The documented disagreements (docs/events.md, "Where msgspec and the standard library
disagree") are pinned one by one below.
"""

from __future__ import annotations

import enum
from datetime import date, datetime
from typing import Any

import attrs
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from amebus import Event
from amebus._fastdecode import fast_decoder
from amebus.codec import _HOOKS, Codec, make_converter
from amebus.errors import DecodeError
from tests.strategies import (
    attrs_instances,
    codec_event_classes,
    fast_event_classes,
    fast_payloads,
    mentions,
)

FAST = Codec()
SLOW = Codec(fast=False)


def _outcome(codec: Codec, cls: type[Any], data: bytes) -> tuple[str, Any]:
    try:
        return "ok", codec.decode(cls, data)
    except DecodeError as err:
        return "refused", (str(err), err.errors, err.size, err.target)


@st.composite
def _class_and_payload(draw: st.DrawFn) -> tuple[type[Any], bytes]:
    cls = draw(fast_event_classes(Event))
    return cls, draw(fast_payloads(cls))


@given(_class_and_payload())
def test_fast_path_equals_cattrs_path(case: tuple[type[Any], bytes]) -> None:
    cls, data = case
    assert fast_decoder(cls, FAST.converter, _HOOKS) is not None, "the fast path was not taken"
    fast = _outcome(FAST, cls, data)
    event(fast[0])
    assert fast == _outcome(SLOW, cls, data)


@st.composite
def _any_class_and_payload(draw: st.DrawFn) -> tuple[type[Any], bytes]:
    cls = draw(codec_event_classes(Event))
    return cls, draw(fast_payloads(cls))


@given(_any_class_and_payload())
def test_codec_equals_cattrs_path_with_datetimes(case: tuple[type[Any], bytes]) -> None:
    # datetime and date fields (ISO 8601 as amebus writes them, and lookalikes) take the
    # cattrs path for their whole class; every other class takes the fast path
    cls, data = case
    fast_taken = fast_decoder(cls, FAST.converter, _HOOKS) is not None
    assert fast_taken == (not mentions(cls, (datetime, date)))
    fast = _outcome(FAST, cls, data)
    event(f"{fast[0]}, fast path {'taken' if fast_taken else 'not taken'}")
    assert fast == _outcome(SLOW, cls, data)


@given(st.data())
def test_what_amebus_encodes_both_paths_decode_back(data: st.DataObject) -> None:
    cls = data.draw(codec_event_classes(Event))
    value = data.draw(attrs_instances(cls))
    encoded = FAST.encode(value, check=True)
    assert encoded == SLOW.encode(value, check=True)
    assert FAST.decode(cls, encoded) == SLOW.decode(cls, encoded) == value


@attrs.frozen
class Plain:
    name: str
    count: int
    ratio: float = 0.0
    flag: bool = False


@pytest.mark.parametrize("data", [
    b'{"name": "a", "count": "1"}', b'{"name": 1, "count": 1}', b'{"name": "a", "count": true}',
    b'{"name": "a", "count": 1.0}', b'{"name": "a", "count": 1, "ratio": NaN}',
    b'{"name": "a", "count": 1, "ratio": Infinity}', b'{"name": "a", "count": 1, "ratio": 1e400}',
    b'{"name": "a", "count": 1, "flag": 1}', b'{"name": "a", "count": 1, "ratio": true}',
    b'{"name": "a", "count": 1, "x": "\xff"}', b'\xef\xbb\xbf{"name": "a", "count": 1}',
    b'{"name": "a", "count": 1' + b"0" * 5000 + b"}", b'{"name": "a", "count": 1}x',
], ids=repr)
def test_both_paths_refuse_what_amebus_refuses(data: bytes) -> None:
    assert _outcome(FAST, Plain, data)[0] == "refused"
    assert _outcome(FAST, Plain, data) == _outcome(SLOW, Plain, data)


@pytest.mark.parametrize("data", [
    b'{"name": "a", "count": 123456789012345678901234567890}',  # beyond 64 bits: accepted
    b'{"name": "a", "count": -9223372036854775809, "ratio": 1}',
    b'{"name": "a", "count": 1, "count": 2}',  # a duplicate key: the last one wins
    b'{"name": 1, "name": "a", "count": 1}',  # msgspec refuses the first: cattrs decides
    b'{"name": "\\ud800", "count": 1}',  # a lone surrogate: msgspec refuses, cattrs accepts
    b'{"name": "a", "count": 1, "unknown": [1, {"deep": null}]}',
    '{"name": "é", "count": 1}'.encode(),
], ids=repr)
def test_both_paths_accept_the_same(data: bytes) -> None:
    assert _outcome(FAST, Plain, data)[0] == "ok"
    assert _outcome(FAST, Plain, data) == _outcome(SLOW, Plain, data)


@pytest.mark.parametrize("unknown", [b"1e400", b"1" + b"0" * 5000, b"-1e400"], ids=repr)
def test_documented_disagreement_numbers_under_an_unknown_key(unknown: bytes) -> None:
    # msgspec skips an undeclared key's number without converting it; stdlib json converts it
    # and refuses it. docs/events.md documents it: the fast path accepts, the value is dropped.
    data = b'{"name": "a", "count": 1, "unknown": ' + unknown + b"}"
    assert _outcome(FAST, Plain, data) == ("ok", Plain("a", 1))
    assert _outcome(SLOW, Plain, data)[0] == "refused"


class Colour(enum.Enum):
    RED = "red"


@attrs.frozen
class WithDatetime:
    at: datetime


@attrs.frozen
class WithValidator:
    count: int = attrs.field(converter=int)


@attrs.frozen
class OwnConverter:
    name: str
    converter = make_converter()


@attrs.frozen
class Nested:
    plain: Plain
    colours: list[Colour]
    by_key: dict[str, int | None]


def test_which_classes_take_the_fast_path() -> None:
    assert fast_decoder(Plain, FAST.converter, _HOOKS) is not None
    assert fast_decoder(Nested, FAST.converter, _HOOKS) is not None
    for cls in (WithDatetime, WithValidator, OwnConverter):
        assert fast_decoder(cls, FAST.converter, _HOOKS) is None, cls
    assert FAST.decode(WithDatetime, b'{"at": "2026-01-02T03:04:05Z"}') == SLOW.decode(
        WithDatetime, b'{"at": "2026-01-02T03:04:05Z"}')


def test_a_replaced_scalar_hook_keeps_the_cattrs_path() -> None:
    converter = make_converter()
    converter.register_structure_hook(int, lambda value, _: int(value))  # a lax int
    codec = Codec(converter)
    assert fast_decoder(Plain, converter, _HOOKS) is None
    assert codec.decode(Plain, b'{"name": "a", "count": "7"}') == Plain("a", 7)


def test_a_refusal_keeps_the_detailed_error() -> None:
    with pytest.raises(DecodeError) as caught:
        FAST.decode(Nested, b'{"plain": {"name": 1, "count": "2"}, "colours": ["blue"],'
                            b' "by_key": {}}')
    assert caught.value.errors == (
        "expected str, got 1 (int) @ $.plain.name",
        "expected int, got '2' (str) @ $.plain.count",
        "invalid value for type, expected Colour @ $.colours[0]",
    )
    assert str(caught.value) == _outcome(SLOW, Nested, b'{"plain": {"name": 1, "count": "2"},'
                                                      b' "colours": ["blue"], "by_key": {}}')[1][0]


# -- where msgspec and the standard library disagree (docs/events.md) ---------------------------


@attrs.frozen
class Numbers:
    count: int = 0
    ratio: float = 0.0
    counts: list[int] = attrs.Factory(list)
    ratios: dict[str, float] = attrs.Factory(dict)
    plain: Plain | None = None


BIG = 123456789012345678901234567890  # past 64 bits: 97 bits
HUGE = b"1" + b"0" * 4300  # 4,301 digits: past Python's int-to-text limit


def _msgspec_alone(cls: type[Any], data: bytes) -> str:
    decode = fast_decoder(cls, FAST.converter, _HOOKS)
    assert decode is not None
    try:
        decode(data)
    except Exception:  # any refusal: the codec then asks cattrs
        return "refused"
    return "ok"


class TestDisagreementsOnDecode:
    """The same outcome on both paths, whether msgspec accepts or refuses and cattrs decides."""

    @pytest.mark.parametrize(("data", "msgspec", "expected"), [
        # beyond 64 bits: both accept, as Python ints (a float field: the nearest float)
        (b'{"count": %d}' % BIG, "ok", Numbers(count=BIG)),
        (b'{"count": %d}' % -BIG, "ok", Numbers(count=-BIG)),
        (b'{"ratio": %d}' % BIG, "ok", Numbers(ratio=float(BIG))),
        (b'{"counts": [1, %d]}' % BIG, "ok", Numbers(counts=[1, BIG])),
        (b'{"ratios": {"a": %d}}' % BIG, "ok", Numbers(ratios={"a": float(BIG)})),
        # duplicate keys, at the top and nested: the last wins on both paths
        (b'{"count": 1, "count": 2}', "ok", Numbers(count=2)),
        (b'{"ratios": {"a": 1, "a": 2.5}}', "ok", Numbers(ratios={"a": 2.5})),
        (b'{"plain": {"name": "a", "count": 1, "count": 3}}', "ok",
         Numbers(plain=Plain("a", 3))),
        # msgspec refuses the first value's type and stops; cattrs sees only the last value
        (b'{"count": "1", "count": 2}', "refused", Numbers(count=2)),
        (b'{"ratios": {"a": "x", "a": 1.5}}', "refused", Numbers(ratios={"a": 1.5})),
        (b'{"plain": {"name": 1, "name": "a", "count": 1}}', "refused",
         Numbers(plain=Plain("a", 1))),
        (b'{"ratio": -0.0}', "ok", Numbers(ratio=-0.0)),
        (b'{"ratio": 1e-400}', "ok", Numbers(ratio=0.0)),  # underflows to 0.0 on both paths
    ], ids=repr)
    def test_accepted_alike(self, data: bytes, msgspec: str, expected: Numbers) -> None:
        assert _msgspec_alone(Numbers, data) == msgspec
        assert _outcome(FAST, Numbers, data) == _outcome(SLOW, Numbers, data) == ("ok", expected)

    @pytest.mark.parametrize("data", [
        b'{"ratio": NaN}', b'{"ratio": -Infinity}', b'{"counts": [NaN]}',
        b'{"ratios": {"a": Infinity}}', b'{"ratio": 1e400}', b'{"ratios": {"a": -1e400}}',
        b'{"count": ' + HUGE + b"}", b'{"counts": [' + HUGE + b"]}",
        b'{"ratio": ' + HUGE + b"}",  # an int past the float range in a float field
        b'{"count": 1, "count": "2"}',  # the last value is of the wrong type
        b'{"plain": {"name": "a", "count": 1, "count": true}}',
    ], ids=lambda data: repr(data[:60]))
    def test_refused_alike(self, data: bytes) -> None:
        assert _msgspec_alone(Numbers, data) == "refused"
        fast = _outcome(FAST, Numbers, data)
        assert fast[0] == "refused"
        assert fast == _outcome(SLOW, Numbers, data)  # the same detailed DecodeError


class TestDisagreementsOnEncode:
    """Encoding is the standard library's on both codecs: strict where msgspec is lax."""

    @pytest.mark.parametrize("codec", [FAST, SLOW], ids=["fast", "cattrs"])
    @pytest.mark.parametrize("value", [
        Numbers(count=BIG, counts=[-BIG], ratios={"a": -0.0}),
        Numbers(count=2**64, ratio=5e-324, plain=Plain("a", -(2**63) - 1)),
    ], ids=["97-bit", "64-bit-edges"])
    def test_big_ints_round_trip(self, codec: Codec, value: Numbers) -> None:
        data = codec.encode(value, check=True)
        assert str(BIG).encode() in data or b"18446744073709551616" in data
        assert FAST.decode(Numbers, data) == SLOW.decode(Numbers, data) == value

    @pytest.mark.parametrize("codec", [FAST, SLOW], ids=["fast", "cattrs"])
    @pytest.mark.parametrize(("value", "shown", "path"), [
        (Numbers(ratio=float("nan")), "nan", "$.ratio"),
        (Numbers(counts=[], ratios={"a": 1.0, "b": float("inf")}), "inf", "$.ratios['b']"),
        (Numbers(plain=Plain("a", 1, ratio=float("-inf"))), "-inf", "$.plain.ratio"),
    ], ids=["nan", "inf-in-dict", "-inf-nested"])
    def test_nan_and_infinity_are_refused_with_their_path(
            self, codec: Codec, value: Numbers, shown: str, path: str) -> None:
        # msgspec.json.encode writes them as null, which a float field then refuses
        for check in (True, False):
            with pytest.raises(ValueError) as caught:
                codec.encode(value, check=check)
            assert str(caught.value) == (
                f"cannot encode Numbers: {shown} (float) @ {path} is not JSON, which has no "
                f"NaN or Infinity; give a finite number (or None in an Optional field)")

    @pytest.mark.parametrize("codec", [FAST, SLOW], ids=["fast", "cattrs"])
    def test_an_int_past_the_digit_limit_is_refused_with_its_path(self, codec: Codec) -> None:
        with pytest.raises(ValueError) as caught:
            codec.encode(Numbers(counts=[1, 10**4300]), check=True)  # 4,301 digits
        assert str(caught.value).startswith(
            "cannot encode Numbers: an int of more than 4,300 digits @ $.counts[1] is past "
            "Python's int-to-text limit")
