"""The JSON codec: round trips, strict types, readable decode errors, per-class converters."""

from __future__ import annotations

import enum
import json
from datetime import UTC, date, datetime
from typing import Any, ClassVar

import attrs
import cattrs
import pytest
from hypothesis import given
from strategies import attrs_instances, wrong_json_for

from amebus.codec import Codec, default_codec, make_converter
from amebus.errors import ConfigurationError, DecodeError
from amebus.events import Event


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Channel(enum.StrEnum):
    WEB = "web"
    SHOP = "shop"


@attrs.frozen
class Line:
    sku: str
    qty: int
    price: float


@attrs.frozen
class Card:
    card_last4: str


@attrs.frozen
class Cash:
    tendered_cents: int


@attrs.frozen
class OrderPlaced(Event):
    subject = "order.placed"

    order_id: str
    amount: float
    paid: bool
    note: str | None
    at: datetime
    currency: Currency
    lines: list[Line]
    tags: dict[str, int]


@attrs.frozen
class Everything(Event):
    subject = "test.everything"

    text: str
    number: int
    ratio: float
    flag: bool
    maybe: int | None
    either: int | str
    when: datetime
    day: date
    blob: bytes
    currency: Currency
    priority: Priority
    channel: Channel
    line: Line
    payment: Card | Cash
    lines: list[Line]
    ids: tuple[int, ...]
    labels: frozenset[str]
    scores: dict[str, float]
    nested: dict[str, list[Line | None]]


@attrs.frozen
class Named:
    name: str


@attrs.frozen
class Counted:
    count: int


@attrs.frozen
class Measured:
    value: float


@attrs.frozen
class Flagged:
    on: bool


PAID = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


@attrs.frozen
class Stamped:
    at: datetime


@attrs.frozen
class Wrong:
    prices: dict[str, Currency] = attrs.Factory(dict)
    at: list[Stamped] = attrs.Factory(list)
    nested: dict[str, dict[str, float]] = attrs.Factory(dict)


def placed(**changes: Any) -> OrderPlaced:
    values: dict[str, Any] = {
        "order_id": "o-1", "amount": 12.5, "paid": True, "note": None, "at": PAID,
        "currency": Currency.EUR, "lines": [Line("sku-1", 2, 6.25)], "tags": {"gift": 1},
    }
    return OrderPlaced(**(values | changes))


class TestRoundTrip:
    """decode(encode(e)) == e for every value the supported field types can hold."""

    @given(attrs_instances(Everything))
    def test_everything(self, event: Everything) -> None:
        assert default_codec.decode(Everything, default_codec.encode(event)) == event

    @given(attrs_instances(OrderPlaced))
    def test_order_placed(self, event: OrderPlaced) -> None:
        assert default_codec.decode(OrderPlaced, default_codec.encode(event)) == event

    @given(attrs_instances(Everything))
    def test_payload_is_a_json_object_keyed_by_field(self, event: Everything) -> None:
        assert set(json.loads(default_codec.encode(event))) == {
            f.name for f in attrs.fields(Everything)}


class TestWireFormat:
    """make_converter(): the documented wire format."""

    def test_fields_as_compact_utf8_json(self) -> None:
        data = default_codec.encode(placed(order_id="ö-1"))
        assert data == (
            '{"order_id":"ö-1","amount":12.5,"paid":true,"note":null,'
            '"at":"2026-01-02T03:04:05.678000+00:00","currency":"EUR",'
            '"lines":[{"sku":"sku-1","qty":2,"price":6.25}],"tags":{"gift":1}}'
        ).encode()

    def test_bytes_are_base64(self) -> None:
        converter = make_converter()
        assert converter.unstructure(b"\x00\xff") == "AP8="
        assert converter.structure("AP8=", bytes) == b"\x00\xff"

    def test_enums_are_their_values(self) -> None:
        converter = make_converter()
        assert converter.unstructure(Priority.HIGH) == 2
        assert converter.unstructure(Channel.SHOP) == "shop"
        assert converter.structure(2, Priority) is Priority.HIGH
        assert converter.structure("shop", Channel) is Channel.SHOP

    def test_unknown_keys_are_ignored(self) -> None:
        data = json.dumps({"name": "x", "added_later": 1}).encode()
        assert default_codec.decode(Named, data) == Named("x")

    def test_a_union_of_attrs_classes_is_told_apart_by_unique_fields(self) -> None:
        converter = make_converter()
        payment: Any = Card | Cash
        assert converter.structure({"tendered_cents": 5}, payment) == Cash(5)
        assert converter.structure({"card_last4": "1234"}, payment) == Card("1234")

    def test_each_call_makes_a_new_converter_and_the_global_one_is_untouched(self) -> None:
        assert make_converter() is not make_converter()
        assert cattrs.global_converter.structure("1", int) == 1  # still lenient out there


class TestStrictTypes:
    """A JSON value of the wrong type is a DecodeError: no coercion, ``1`` is not ``"1"``."""

    @given(wrong_json_for(str))
    def test_str_field(self, value: Any) -> None:
        with pytest.raises(DecodeError, match=r"expected str, got .* @ \$\.name"):
            default_codec.decode(Named, json.dumps({"name": value}).encode())

    @given(wrong_json_for(int))
    def test_int_field(self, value: Any) -> None:
        with pytest.raises(DecodeError, match=r"expected int, got .* @ \$\.count"):
            default_codec.decode(Counted, json.dumps({"count": value}).encode())

    @given(wrong_json_for(float))
    def test_float_field(self, value: Any) -> None:
        with pytest.raises(DecodeError, match=r"expected number, got .* @ \$\.value"):
            default_codec.decode(Measured, json.dumps({"value": value}).encode())

    @given(wrong_json_for(bool))
    def test_bool_field(self, value: Any) -> None:
        with pytest.raises(DecodeError, match=r"expected true or false, got .* @ \$\.on"):
            default_codec.decode(Flagged, json.dumps({"on": value}).encode())

    def test_int_refuses_true_and_bool_refuses_1(self) -> None:
        with pytest.raises(DecodeError, match=r"expected int, got True \(bool\) @ \$\.count"):
            default_codec.decode(Counted, b'{"count": true}')
        with pytest.raises(DecodeError, match=r"expected true or false, got 1 \(int\) @ \$\.on"):
            default_codec.decode(Flagged, b'{"on": 1}')

    def test_a_float_field_takes_an_integer(self) -> None:
        decoded = default_codec.decode(Measured, b'{"value": 3}')
        assert decoded == Measured(3.0)
        assert type(decoded.value) is float


class TestDecodeErrors:
    """Every failure is a DecodeError with readable paths, the size and the target class."""

    def test_missing_field_names_its_path(self) -> None:
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(Named, b"{}")
        assert caught.value.errors == ("required field missing @ $.name",)
        assert caught.value.size == 2
        assert caught.value.target is Named
        assert str(caught.value) == (
            "cannot decode 2 bytes into Named: required field missing @ $.name; "
            "the producer's schema differs from this class")

    def test_nested_paths(self) -> None:
        data = json.loads(default_codec.encode(placed()))
        data["lines"][0]["qty"] = "2"
        data["tags"]["gift"] = None
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(OrderPlaced, json.dumps(data).encode())
        assert caught.value.errors == (
            "expected int, got '2' (str) @ $.lines[0].qty",
            "expected int, got None (NoneType) @ $.tags['gift']",
        )

    def test_bad_enum_and_datetime(self) -> None:
        data = json.loads(default_codec.encode(placed()))
        data |= {"currency": "GBP", "at": 1700000000}
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(OrderPlaced, json.dumps(data).encode())
        assert caught.value.errors == (
            "expected ISO 8601 str, got 1700000000 (int) @ $.at",
            "invalid value for type, expected Currency @ $.currency",
        )

    def test_invalid_base64(self) -> None:
        @attrs.frozen
        class Blob:
            data: bytes

        with pytest.raises(DecodeError, match=r"expected base64 str, got '!!' \(str\) @ \$\.data"):
            default_codec.decode(Blob, b'{"data": "!!"}')

    @pytest.mark.parametrize(("payload", "problem"), [
        (b'{"name": ', "the payload is not UTF-8 JSON (Expecting value"),
        (b"\xff\xfe{}", "the payload is not UTF-8 JSON ('utf-8' codec can't decode byte 0xff"),
        (b"", "the payload is not UTF-8 JSON (Expecting value"),
        (b'{"value": NaN}', "the payload is not UTF-8 JSON (NaN is not JSON)"),
        (b'{"value": Infinity}', "the payload is not UTF-8 JSON (Infinity is not JSON)"),
    ])
    def test_not_json(self, payload: bytes, problem: str) -> None:
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(Named, payload)
        assert str(caught.value).startswith(f"cannot decode {len(payload)} bytes into Named: ")
        assert problem in str(caught.value)
        assert str(caught.value).endswith("; the producer must publish a JSON object")
        assert caught.value.size == len(payload)

    @pytest.mark.parametrize(("payload", "kind"), [
        (b"[1, 2]", "array"), (b'"x"', "string"), (b"3", "number"), (b"null", "null"),
        (b"true", "boolean"),
    ])
    def test_not_an_object(self, payload: bytes, kind: str) -> None:
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(Named, payload)
        assert str(caught.value) == (
            f"cannot decode {len(payload)} bytes into Named: the payload is a JSON {kind}, "
            f"not an object; an event is a JSON object of its fields")

    def test_never_an_exception_group(self) -> None:
        with pytest.raises(DecodeError) as caught:
            default_codec.decode(OrderPlaced, b'{"order_id": 1}')
        assert not isinstance(caught.value, BaseExceptionGroup)
        assert caught.value.__cause__ is None
        assert len(caught.value.errors) == 8


class TestEncodeErrors:
    def test_nan_is_refused(self) -> None:
        with pytest.raises(ValueError, match=r"^cannot encode Measured: nan \(float\) @ \$\.value "
                                             r"is not JSON, which has no NaN or Infinity; give a "
                                             r"finite number"):
            default_codec.encode(Measured(float("nan")))

    def test_a_value_json_cannot_hold(self) -> None:
        @attrs.frozen
        class Loose:
            thing: Any

        with pytest.raises(TypeError, match=r"cannot encode Loose\(thing=<object object at .*>\) "
                                            r"as JSON: Object of type object is not JSON "
                                            r"serializable; give every field a JSON type"):
            default_codec.encode(Loose(object()))

    # Regression: a float where an enum or a datetime is declared (a dict[str, Currency]
    # holding 1.5) raised AttributeError ('float' object has no attribute 'value') from the
    # unstructure hook, on the fast and the cattrs codec alike, with or without the check.
    @pytest.mark.parametrize("fast", [True, False], ids=["fast", "cattrs"])
    @pytest.mark.parametrize("check", [True, False], ids=["checked", "unchecked"])
    @pytest.mark.parametrize(("value", "expected"), [
        (Wrong(prices={"a": 1.5}), r"expected Currency, got 1\.5 \(float\) @ \$\.prices\['a'\]"),
        (Wrong(at=[Stamped(datetime(2026, 1, 1, tzinfo=UTC)), Stamped(2.5)]),  # type: ignore[arg-type]
         r"expected datetime, got 2\.5 \(float\) @ \$\.at\[1\]\.at"),
        (Wrong(nested={"x": 1.5}),  # type: ignore[dict-item]
         r"expected dict\[str, float\], got 1\.5 \(float\) @ \$\.nested\['x'\]"),
    ], ids=["enum-in-dict", "datetime-in-list", "float-for-dict"])
    def test_a_wrong_value_under_a_hooked_type_names_its_path(
            self, value: Wrong, expected: str, fast: bool, check: bool) -> None:
        with pytest.raises(TypeError, match=r"^cannot encode Wrong: " + expected
                           + r"; give each field a value of its declared type") as caught:
            Codec(fast=fast).encode(value, check=check)
        assert not isinstance(caught.value, AttributeError)

    @pytest.mark.parametrize("fast", [True, False], ids=["fast", "cattrs"])
    def test_a_dict_of_floats_encodes(self, fast: bool) -> None:
        codec = Codec(fast=fast)
        value = Wrong(prices={}, nested={"x": {"y": 1.5, "z": 2}})
        assert codec.encode(value, check=True) == (
            b'{"prices":{},"at":[],"nested":{"x":{"y":1.5,"z":2}}}')
        assert codec.decode(Wrong, codec.encode(value)) == value

    def test_not_an_attrs_instance(self) -> None:
        with pytest.raises(ConfigurationError, match=r"Codec.encode\(\) takes an attrs class "
                                                     r"such as an Event subclass, got <class "
                                                     r"'dict'>; decorate the class with "
                                                     r"@attrs.frozen"):
            default_codec.encode({"a": 1})

    def test_decoder_of_a_plain_class(self) -> None:
        with pytest.raises(ConfigurationError, match=r"Codec.decoder\(\) takes an attrs class"):
            default_codec.decoder(dict)


class TestCodec:
    def test_decoder_is_looked_up_once_per_class(self) -> None:
        codec = Codec()
        assert codec.decoder(Named) is codec.decoder(Named)
        assert codec.decoder(Named)(b'{"name": "x"}') == Named("x")

    def test_a_given_converter_is_used(self) -> None:
        converter = make_converter()
        converter.register_unstructure_hook(Line, lambda line: f"{line.sku}x{line.qty}")
        converter.register_structure_hook(
            Line, lambda text, _: Line(text.split("x")[0], int(text.split("x")[1]), 0.0))
        codec = Codec(converter)
        event = placed(lines=[Line("a", 3, 0.0)])
        assert json.loads(codec.encode(event))["lines"] == ["ax3"]
        assert codec.decode(OrderPlaced, codec.encode(event)) == event

    def test_a_class_converter_wins(self) -> None:
        timestamps = make_converter()
        timestamps.register_unstructure_hook(datetime, lambda value: value.timestamp())
        timestamps.register_structure_hook(
            datetime, lambda value, _: datetime.fromtimestamp(value, UTC))

        @attrs.frozen
        class Stamped(Event):
            subject = "test.stamped"
            converter: ClassVar[cattrs.Converter] = timestamps
            at: datetime

        event = Stamped(PAID)
        for codec in (default_codec, Codec()):
            assert json.loads(codec.encode(event)) == {"at": PAID.timestamp()}
            assert codec.decode(Stamped, codec.encode(event)) == event
