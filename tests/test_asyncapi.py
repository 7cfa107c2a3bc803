"""``amebus asyncapi``: the document is valid against the official AsyncAPI 3.0.0 JSON Schema
(tests/data, from the npm package @asyncapi/specs), and each message's payload schema accepts
what amebus really puts on the wire for that event."""

from __future__ import annotations

import copy
import datetime
import gzip
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import attrs
import jsonschema
import pytest

from amebus import Event, Route, Router, Service
from amebus.asyncapi import asyncapi_document
from amebus.codec import default_codec

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = json.loads(gzip.decompress((ROOT / "tests/data/asyncapi-3.0.0.schema.json.gz")
                                    .read_bytes()))


def errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(document)]


@attrs.frozen
class Line:
    """One line of an order."""

    sku: str
    quantity: int = 1


@attrs.frozen
class Placed(Event):
    """An order was placed."""

    subject_pattern = "shop.placed.*"
    order_id: str
    lines: tuple[Line, ...]
    at: datetime.datetime
    note: str | None = None
    channel: Literal["web", "store"] = "web"
    tags: dict[str, str] = attrs.field(factory=dict)

    def subject(self) -> tuple[str, ...]:
        return ("shop", "placed", self.order_id)


@attrs.frozen
class Shipped(Event):
    subject = "shop.parcel.shipped"
    order_id: str


@attrs.frozen
class Returned(Event):
    subject = "shop.parcel.returned"
    order_id: str
    reason: str


class Shop(Service):
    """Orders of the web shop."""

    stream = "SHOP"

    @Route(Placed)
    async def placed(self, event: Placed) -> None:
        """Book a placed order."""

    async def _parcel(self, event: Shipped | Returned) -> None: ...

    parcels = Router("shop", parcel=Route("parcel.*", _parcel),
                     any=Route("other.>", lambda payload: None))


def test_the_document_is_valid_asyncapi_3() -> None:
    document = asyncapi_document(Shop, version="1.2.0", server="nats://127.0.0.1:4222")
    assert errors(document) == []
    assert document["channels"]["placed"]["address"] == "shop.placed.{token3}"
    assert document["channels"]["parcels.any"]["address"] == "shop.other.{rest}"
    assert set(document["channels"]["parcels.parcel"]["messages"]) == {"Shipped", "Returned"}
    assert document["operations"]["placed"]["summary"] == "Book a placed order."
    assert document["info"] == {"title": "Shop", "version": "1.2.0",
                                "description": "Orders of the web shop."}


def test_the_validation_can_fail() -> None:
    document = asyncapi_document(Shop)
    broken = copy.deepcopy(document)
    del broken["info"]["version"]
    broken["operations"]["placed"]["action"] = "consume"
    found = errors(broken)
    assert any("'version' is a required property" in e for e in found), found
    assert any(e.startswith("operations/placed") for e in found), found


@pytest.mark.parametrize("event", [
    Placed("1", (Line("a"), Line("b", 3)), datetime.datetime(2026, 1, 2, 3, 4, 5),
           note="ring twice", tags={"vip": "yes"}),
    Placed("2", (), datetime.datetime(2026, 1, 2), channel="store"),
    Returned("3", reason="broken"),
])
def test_payload_schemas_accept_the_wire_format(event: Event) -> None:
    document = asyncapi_document(Shop)
    payload = json.loads(default_codec.encode(event))
    message = next(m for channel in document["channels"].values()
                   for m in channel["messages"].values() if m.get("title") == type(event).__name__)
    schema = {**message["payload"], "components": document["components"]}
    jsonschema.validate(payload, schema)
    assert message["headers"]["properties"]["Amebus-Event-Type"]["const"] == event.event_type
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**payload, "order_id": 7}, schema)


def test_the_command_prints_it_for_the_complete_example() -> None:
    done = subprocess.run([sys.executable, "-m", "amebus", "asyncapi",
                           "examples/orders.py:OrderService", "--api-version", "2.0.0"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert errors(document) == []
    assert document["info"]["version"] == "2.0.0"
    assert len(document["operations"]) == 4


def test_two_event_classes_of_the_same_name_get_two_schemas() -> None:
    other: Any = {}
    exec("import attrs\nfrom amebus import Event\n@attrs.frozen\nclass Shipped(Event):\n"
         "    subject = 'shop.parcel.lost'\n    parcel: int\n", other)
    theirs = other["Shipped"]

    async def either(event: Shipped | theirs) -> None: ...  # type: ignore[valid-type]

    cls: Any = type("Parcels", (Service,), {"any": Route("shop.parcel.*", either)})
    document = asyncapi_document(cls)
    assert errors(document) == []
    schemas = document["components"]["schemas"]
    assert len(schemas) == 2 and schemas["Shipped"]["required"] == ["order_id"]
    [key] = set(schemas) - {"Shipped"}
    assert schemas[key]["required"] == ["parcel"]
    assert set(document["channels"]["any"]["messages"]) == {"Shipped", key}
