"""Typed events: declaration rules, subjects, event types, and publishing to a real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any, ClassVar

import attrs
import cattrs
import nats
import pytest
from hypothesis import HealthCheck, given, settings
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, PubAck, StreamConfig
from strategies import subject_tokens, valid_tokens

from amebus import events, publish
from amebus.errors import (
    BatchPublishError,
    ConfigurationError,
    NoStreamError,
    PublishError,
    SubjectError,
)
from amebus.events import (
    EVENT_TYPE_HEADER,
    Event,
    event_pattern,
    is_event_class,
    subject_of,
)
from amebus.publish import publish_many


def token_is_valid(token: str) -> bool:
    """The oracle, by a different algorithm than amebus.subjects: a whitelist walk."""
    if token in ("", "*", ">"):
        return False
    return all(ch not in ".*> \t\r\n\f\v\x00" or ch in "*>" for ch in token)


@attrs.frozen
class OrderPaid(Event):
    subject = "order.paid"
    order_id: str


@attrs.frozen
class Invoice(Event):
    subject: ClassVar[str] = "invoice"
    number: int


@attrs.frozen
class OrderShipped(Event):
    subject_pattern = "order.shipped.*"
    event_type = "orders.shipped.v1"
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return ("order", "shipped", self.order_id)


@attrs.frozen
class Probe(Event):
    """Puts any token at a known position of the subject."""

    scope: str
    token: str

    def subject(self) -> list[str]:
        return [self.scope, "probe", self.token, "end"]


@attrs.frozen
class Returns(Event):
    """Its subject() returns whatever it is given."""

    value: Any

    def subject(self) -> Any:
        return self.value


class OrderEvent(Event, abstract=True):
    """An abstract base: no subject of its own."""


@attrs.frozen
class OrderCancelled(OrderEvent):
    subject = "order.cancelled"
    order_id: str


@attrs.frozen
class Received(Event):
    """Only ever received: a pattern and no subject."""

    subject_pattern = "order.>"
    order_id: str


def declare(body: str) -> type[Any]:
    """Run a class statement (text) and return the class, so each test shows its declaration."""
    space: dict[str, Any] = {"attrs": attrs, "Event": Event, "ClassVar": ClassVar,
                             "cattrs": cattrs, "__name__": "decl"}
    exec(body, space)
    return space["Declared"]  # type: ignore[no-any-return]


class TestStaticSubject:
    """``subject = "..."`` or ``subject: ClassVar[str] = "..."``: a literal subject."""

    def test_plain_class_attribute(self) -> None:
        assert subject_of(OrderPaid("1")) == "order.paid"
        assert event_pattern(OrderPaid) == ("order", "paid")

    def test_classvar(self) -> None:
        assert subject_of(Invoice(7)) == "invoice"
        assert [f.name for f in attrs.fields(Invoice)] == ["number"]

    def test_annotated_without_classvar_is_refused(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare("@attrs.frozen\nclass Declared(Event):\n"
                    "    subject: str = 'order.paid'\n    order_id: str = ''\n")
        assert str(caught.value) == (
            "Declared.subject is annotated, so attrs made it a field of the payload; write "
            "`subject: ClassVar[str] = 'order.paid'` or drop the annotation")

    def test_wildcards_are_refused(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare("@attrs.frozen\nclass Declared(Event):\n    subject = 'order.*'\n")
        assert str(caught.value) == (
            "Declared.subject is invalid: subject 'order.*' contains the wildcard '*'; a "
            "published subject must be literal (use subject_pattern for the pattern an event "
            "follows)")
        assert isinstance(caught.value.__cause__, SubjectError)

    def test_not_a_str(self) -> None:
        with pytest.raises(ConfigurationError, match=r"^Declared.subject is 5 \(int\); make it "
                                                     r"a str \(subject = 'order.paid'\) or a "
                                                     r"method \(def subject\(self\)\)$"):
            declare("@attrs.frozen\nclass Declared(Event):\n    subject = 5\n")

    def test_with_its_own_subject_pattern_is_refused(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare("@attrs.frozen\nclass Declared(Event):\n    subject = 'order.paid'\n"
                    "    subject_pattern = 'order.*'\n")
        assert str(caught.value) == (
            "Declared declares both a static subject 'order.paid' and subject_pattern "
            "'order.*'; subject_pattern is for a subject() method, a static subject is its own "
            "pattern: drop subject_pattern")

    def test_must_match_an_inherited_pattern(self) -> None:
        @attrs.frozen
        class Fixed(OrderShipped):
            subject = "order.shipped.all"  # type: ignore[assignment]

        assert subject_of(Fixed("x")) == "order.shipped.all"
        with pytest.raises(ConfigurationError, match=r"<locals>.Wrong.subject 'order.paid' "
                                                     r"does not match the subject_pattern "
                                                     r"'order.shipped.\*' it inherits; change "
                                                     r"the subject or override subject_pattern$"):

            @attrs.frozen
            class Wrong(OrderShipped):
                subject = "order.paid"  # type: ignore[assignment]


class TestDynamicSubject:
    """``def subject(self)`` returns tokens (each validated) or a str (validated whole)."""

    def test_tokens(self) -> None:
        assert subject_of(OrderShipped("o-1")) == "order.shipped.o-1"
        assert event_pattern(OrderShipped) == ("order", "shipped", "*")
        assert event_pattern(Probe) is None

    def test_a_str(self) -> None:
        assert subject_of(Returns("a.b.c")) == "a.b.c"

    def test_a_property(self) -> None:
        @attrs.frozen
        class Prop(Event):
            order_id: str

            @property
            def subject(self) -> tuple[str, ...]:
                return ("order", self.order_id)

        assert subject_of(Prop("9")) == "order.9"

    @pytest.mark.parametrize(("token", "problem"), [
        ("1.*", "subject token '1.*' contains '.'; a token is one level of a subject, so a "
                "value with dots would publish to a different subject"),
        ("", "subject token '' is empty; every token needs at least one character"),
        ("*", "subject token '*' is a wildcard; a published subject must be literal"),
        (">", "subject token '>' is a wildcard; a published subject must be literal"),
        ("a b", "subject token 'a b' contains a space; tokens may not"),
        ("a\vb", "subject token 'a\\x0bb' contains a vertical tab; tokens may not"),
    ])
    def test_bad_token(self, token: str, problem: str) -> None:
        with pytest.raises(SubjectError) as caught:
            subject_of(Probe("p", token))
        tokens = ["p", "probe", token, "end"]
        assert str(caught.value) == f"Probe.subject() returned token 2 of {tokens!r}: {problem}"

    def test_a_token_that_is_not_a_str(self) -> None:
        with pytest.raises(SubjectError, match=r"^Returns.subject\(\) returned token 1 of "
                                               r"\['order', 7\]: subject token must be a str, "
                                               r"got 7 \(int\); convert it$"):
            subject_of(Returns(["order", 7]))

    def test_a_bad_str(self) -> None:
        with pytest.raises(SubjectError, match=r"^Returns.subject\(\) returned an invalid "
                                               r"subject: subject 'order.\*' contains the "
                                               r"wildcard '\*'"):
            subject_of(Returns("order.*"))

    @pytest.mark.parametrize("value", [None, 7, (), b"order"])
    def test_not_tokens(self, value: object) -> None:
        with pytest.raises(SubjectError) as caught:
            subject_of(Returns(value))
        assert str(caught.value) == (
            f"Returns.subject() returned {value!r} ({type(value).__name__}); return a non-empty "
            f"sequence of str tokens, like ('order', 'paid', self.order_id)")

    def test_must_match_its_pattern(self) -> None:
        @attrs.frozen
        class Patterned(Event):
            subject_pattern = "order.*"
            value: str

            def subject(self) -> str:
                return self.value

        assert subject_of(Patterned("order.1")) == "order.1"
        with pytest.raises(SubjectError) as caught:
            subject_of(Patterned("order.1.2"))  # an f-string subject with a dotted value
        assert str(caught.value).endswith(
            ".<locals>.Patterned.subject() gave 'order.1.2', which does not match its "
            "subject_pattern 'order.*'; fix subject() or the pattern")

    @given(subject_tokens())
    def test_a_token_is_kept_whole_or_refused(self, token: str) -> None:
        """The spec: any token lands exactly at its position, or raises SubjectError."""
        event = Probe("amebus", token)
        if token_is_valid(token):
            assert subject_of(event).split(".") == ["amebus", "probe", token, "end"]
        else:
            with pytest.raises(SubjectError):
                subject_of(event)

    @given(valid_tokens())
    def test_valid_tokens_always_pass(self, token: str) -> None:
        assert subject_of(Probe("amebus", token)) == f"amebus.probe.{token}.end"


class TestDeclaration:
    """Checks run once, when attrs has built the class; mistakes name their fix."""

    def test_neither_subject_nor_pattern(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare("@attrs.frozen\nclass Declared(Event):\n    order_id: str\n")
        assert str(caught.value) == (
            "Declared has no subject; set a static one (subject = 'order.paid'), compute it "
            "(def subject(self) -> tuple[str, ...]: return ('order', 'paid', self.id)), give "
            "only a subject_pattern for an event you receive but never publish, or declare a "
            "base: class Declared(Event, abstract=True)")

    def test_checked_once_despite_the_slotted_rebuild(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        calls: list[str] = []
        real = events._declare

        def counting(cls: type[Any]) -> Any:
            calls.append(cls.__qualname__)
            return real(cls)

        monkeypatch.setattr(events, "_declare", counting)
        declare("@attrs.frozen\nclass Declared(Event):\n    subject = 'a.b'\n")
        declare("@attrs.define(slots=False)\nclass Declared(Event):\n    subject = 'a.b'\n")
        assert calls == ["Declared", "Declared"]

    def test_abstract_bases(self) -> None:
        assert not is_event_class(OrderEvent)
        assert is_event_class(OrderCancelled)
        assert subject_of(OrderCancelled("1")) == "order.cancelled"

        @attrs.frozen
        class Base(Event, abstract=True):
            order_id: str

        @attrs.frozen
        class Child(Base):
            subject = "order.child"

        assert not is_event_class(Base)
        assert is_event_class(Child)
        assert attrs.fields(Child).order_id.name == "order_id"
        with pytest.raises(ConfigurationError, match=r"^TestDeclaration.test_abstract_bases."
                                                     r"<locals>.Base is abstract \(declared with "
                                                     r"abstract=True\); use one of its concrete "
                                                     r"subclasses$"):
            subject_of(Base("1"))

    def test_a_subclass_of_an_abstract_base_is_not_abstract(self) -> None:
        with pytest.raises(ConfigurationError, match="Declared has no subject"):
            declare("class Base(Event, abstract=True):\n    pass\n"
                    "@attrs.frozen\nclass Declared(Base):\n    x: int\n")

    def test_receive_only(self) -> None:
        assert is_event_class(Received)
        assert event_pattern(Received) == ("order", ">")
        with pytest.raises(ConfigurationError) as caught:
            subject_of(Received("1"))
        assert str(caught.value) == (
            "Received declares only subject_pattern 'order.>', so it can be received but not "
            "published; add def subject(self) returning tokens that match the pattern")

    def test_bad_subject_pattern(self) -> None:
        with pytest.raises(ConfigurationError, match=r"^Declared.subject_pattern is invalid: "
                                                     r"pattern 'order.>.x' has '>' at token 2"):
            declare("@attrs.frozen\nclass Declared(Event):\n    subject_pattern = 'order.>.x'\n")

    @pytest.mark.parametrize(("line", "fix"), [
        ("subject_pattern: str = 'a.*'", "`subject_pattern: ClassVar[str] = 'a.*'`"),
        ("event_type: str = 'a.v1'", "`event_type: ClassVar[str] = 'a.v1'`"),
        ("converter: object = None", "`converter: ClassVar[cattrs.Converter] = None`"),
    ])
    def test_class_attributes_annotated_as_fields(self, line: str, fix: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare(f"@attrs.frozen\nclass Declared(Event):\n    subject = 'a.b'\n    {line}\n")
        name = line.split(":")[0]
        assert str(caught.value) == (
            f"Declared.{name} is annotated, so attrs made it a field of the payload; write "
            f"{fix} or drop the annotation")

    def test_a_field_named_publish(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare("@attrs.frozen\nclass Declared(Event):\n    subject = 'a.b'\n"
                    "    publish: bool\n")
        assert str(caught.value) == (
            "Declared has a field named 'publish', which hides Event.publish(); rename the field")

    def test_converter_must_be_a_converter(self) -> None:
        with pytest.raises(ConfigurationError, match=r"^Declared.converter is 'json'; set it to "
                                                     r"a cattrs converter, e.g. "
                                                     r"amebus.codec.make_converter\(\)$"):
            declare("@attrs.frozen\nclass Declared(Event):\n    subject = 'a.b'\n"
                    "    converter = 'json'\n")

    def test_not_an_attrs_class(self) -> None:
        class Plain(Event):
            subject = "a.b"

        assert not is_event_class(Plain)
        with pytest.raises(ConfigurationError, match=r"Plain is not an attrs class; decorate it "
                                                     r"with @attrs.frozen$"):
            event_pattern(Plain)

    @pytest.mark.parametrize("obj", [Event, OrderPaid("1"), int, "OrderPaid", None, attrs])
    def test_is_event_class_is_false_for(self, obj: object) -> None:
        assert not is_event_class(obj)

    def test_event_base_itself(self) -> None:
        with pytest.raises(ConfigurationError, match=r"^<class 'amebus.events.Event'> is not an "
                                                     r"Event subclass; declare @attrs.frozen "
                                                     r"class Event\(Event\)$"):
            event_pattern(Event)


class TestEventType:
    """The wire name in ``Amebus-Event-Type``: ``module.QualName`` unless the class sets one."""

    def test_default(self) -> None:
        assert OrderPaid.event_type == "OrderPaid"  # the qualified name, not the module path
        assert Received.event_type == "Received"

    def test_override(self) -> None:
        assert OrderShipped.event_type == "orders.shipped.v1"

    def test_not_inherited(self) -> None:
        @attrs.frozen
        class Later(OrderShipped):
            pass

        assert Later.event_type == "TestEventType.test_not_inherited.<locals>.Later"

    @pytest.mark.parametrize("value", ["''", "'orders paid'", "'a\\nb'", "7"])
    def test_invalid(self, value: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            declare(f"@attrs.frozen\nclass Declared(Event):\n    subject = 'a.b'\n"
                    f"    event_type = {value}\n")
        assert str(caught.value) == (
            f"Declared.event_type is {eval(value)!r}; it names the class in the "
            f"Amebus-Event-Type header, so give a non-empty str without whitespace, like "
            f"'orders.paid.v1'")


# -- against a real nats-server ----------------------------------------------------------------


@attrs.frozen
class Scoped(Event):
    """A dynamic event under a test's own prefix."""

    scope: str
    kind: str
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return (self.scope, self.kind, self.order_id)


@attrs.frozen
class Stream:
    name: str
    prefix: str


@pytest.fixture
async def stream(js: JetStreamContext, unique_name: Callable[..., str]) -> AsyncIterator[Stream]:
    """A stream on ``<prefix>.>``, its prefix a token no other test uses."""
    made = Stream(unique_name("EVENTS"), unique_name("ev"))
    await js.add_stream(name=made.name, subjects=[f"{made.prefix}.>"])
    yield made
    with contextlib.suppress(Exception):
        await js.delete_stream(made.name)


async def stored(js: JetStreamContext, stream: Stream,
                 ack: PubAck) -> tuple[str, Any, dict[str, str]]:
    """The subject, decoded JSON payload and headers of a stored message, read with nats-py."""
    msg = await js.get_msg(stream.name, ack.seq)
    assert msg.subject is not None
    assert msg.data is not None
    return msg.subject, json.loads(msg.data), dict(msg.headers or {})


async def message_count(js: JetStreamContext, stream: Stream) -> int:
    return (await js.stream_info(stream.name)).state.messages


class TestPublish:
    async def test_static_event(self, js: JetStreamContext, stream: Stream) -> None:
        prefix = stream.prefix

        @attrs.frozen
        class Paid(Event):
            subject = f"{prefix}.order.paid"
            order_id: str
            cents: int

        ack = await Paid("o-1", 1999).publish(js)
        assert ack.stream == stream.name
        subject, payload, headers = await stored(js, stream, ack)
        assert subject == f"{prefix}.order.paid"
        assert payload == {"order_id": "o-1", "cents": 1999}
        assert headers == {EVENT_TYPE_HEADER: Paid.event_type}

    async def test_dynamic_event(self, js: JetStreamContext, stream: Stream) -> None:
        ack = await Scoped(stream.prefix, "shipped", "o-2").publish(js)
        subject, payload, headers = await stored(js, stream, ack)
        assert subject == f"{stream.prefix}.shipped.o-2"
        assert payload == {"scope": stream.prefix, "kind": "shipped", "order_id": "o-2"}
        assert headers[EVENT_TYPE_HEADER] == "Scoped"

    async def test_extra_headers(self, js: JetStreamContext, stream: Stream) -> None:
        ack = await Scoped(stream.prefix, "a", "1").publish(js, headers={"Trace-Id": "t-1"})
        _, _, headers = await stored(js, stream, ack)
        assert headers == {"Trace-Id": "t-1", EVENT_TYPE_HEADER: "Scoped"}

    async def test_a_conflicting_type_header(self, js: JetStreamContext, stream: Stream) -> None:
        with pytest.raises(ValueError, match=r"^headers\['Amebus-Event-Type'\] is 'other', but "
                                             r"Scoped is 'Scoped'; amebus sets this "
                                             r"header, drop it$"):
            await Scoped(stream.prefix, "a", "1").publish(js, headers={EVENT_TYPE_HEADER: "other"})
        assert await message_count(js, stream) == 0

    async def test_a_conflicting_msg_id(self, js: JetStreamContext, stream: Stream) -> None:
        with pytest.raises(ValueError, match=r"^msg_id 'a' conflicts with headers\['Nats-Msg-Id'\]"
                                             r" 'b'; give one of them$"):
            await Scoped(stream.prefix, "a", "1").publish(js, msg_id="a",
                                                          headers={"Nats-Msg-Id": "b"})

    async def test_msg_id_deduplicates(self, js: JetStreamContext, stream: Stream) -> None:
        event = Scoped(stream.prefix, "paid", "o-3")
        first = await event.publish(js, msg_id="pay-o-3")
        again = await event.publish(js, msg_id="pay-o-3")
        assert not first.duplicate
        assert again.duplicate is True
        assert again.seq == first.seq
        assert await message_count(js, stream) == 1
        _, _, headers = await stored(js, stream, first)
        assert headers["Nats-Msg-Id"] == "pay-o-3"

    async def test_no_stream(self, js: JetStreamContext, unique_name: Callable[..., str]) -> None:
        nowhere = unique_name("nowhere")
        with pytest.raises(NoStreamError) as caught:
            await Scoped(nowhere, "paid", "1").publish(js)
        assert caught.value.subject == f"{nowhere}.paid.1"
        assert str(caught.value) == (
            f"no JetStream stream captures the subject '{nowhere}.paid.1', so the event was not "
            f"stored; create a stream whose subjects include it, e.g. '{nowhere}.>'")

    async def test_refused_by_the_stream(self, js: JetStreamContext,
                                         unique_name: Callable[..., str]) -> None:
        async with limited_stream(js, unique_name, max_msgs=1) as prefix:
            await Scoped(prefix, "a", "1").publish(js)
            with pytest.raises(PublishError) as caught:
                await Scoped(prefix, "a", "2").publish(js)
        assert str(caught.value) == (
            f"the server did not store the event on '{prefix}.a.2': maximum messages exceeded "
            f"(code 503, err_code 10077)")

    async def test_no_ack_in_time(self, nc: Client, js: JetStreamContext,
                                  unique_name: Callable[..., str]) -> None:
        prefix = unique_name("silent")
        silent = await nc.subscribe(f"{prefix}.>")  # takes the request, never answers
        with pytest.raises(PublishError) as caught:
            await Scoped(prefix, "a", "1").publish(js, timeout=0.2)
        await silent.unsubscribe()
        assert str(caught.value) == (
            f"no ack for '{prefix}.a.1' within 0.2s; the server may or may not have stored it: "
            f"publish again with the same msg_id to stay idempotent")

    async def test_invalid_subject_publishes_nothing(self, js: JetStreamContext,
                                                     stream: Stream) -> None:
        with pytest.raises(SubjectError):
            await Scoped(stream.prefix, "paid", "1.*").publish(js)
        assert await message_count(js, stream) == 0


@contextlib.asynccontextmanager
async def limited_stream(js: JetStreamContext, unique_name: Callable[..., str],
                         max_msgs: int) -> AsyncIterator[str]:
    """A stream that refuses new messages beyond ``max_msgs``; yields its subject prefix."""
    name, prefix = unique_name("LIMITED"), unique_name("lim")
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"], max_msgs=max_msgs,
                                     discard=DiscardPolicy.NEW))
    try:
        yield prefix
    finally:
        await js.delete_stream(name)


class TestPublishMany:
    async def test_acks_in_order(self, js: JetStreamContext, stream: Stream) -> None:
        batch = [Scoped(stream.prefix, ("paid", "shipped")[i % 2], f"o-{i}") for i in range(50)]
        acks = await publish_many(js, batch)
        assert [ack.seq for ack in acks] == list(range(1, 51))
        for event, ack in zip(batch, acks, strict=True):
            subject, payload, headers = await stored(js, stream, ack)
            assert subject == subject_of(event)
            assert payload["order_id"] == event.order_id
            assert headers[EVENT_TYPE_HEADER] == "Scoped"

    async def test_more_than_the_window(self, js: JetStreamContext, stream: Stream) -> None:
        batch = [Scoped(stream.prefix, "bulk", str(i)) for i in range(publish._WINDOW * 2 + 10)]
        acks = await publish_many(js, batch)
        assert [ack.seq for ack in acks] == list(range(1, len(batch) + 1))

    async def test_empty_and_single(self, js: JetStreamContext, stream: Stream) -> None:
        assert await publish_many(js, []) == []
        [ack] = await publish_many(js, iter([Scoped(stream.prefix, "one", "1")]))
        assert ack.seq == 1

    async def test_subjects_are_validated_before_sending(self, js: JetStreamContext,
                                                         stream: Stream) -> None:
        batch = [Scoped(stream.prefix, "ok", "1"), Scoped(stream.prefix, "ok", "2"),
                 Scoped(stream.prefix, "bad", "3.>")]
        with pytest.raises(SubjectError) as caught:
            await publish_many(js, batch)
        assert str(caught.value) == (
            f"events[2]: Scoped.subject() returned token 2 of ['{stream.prefix}', 'bad', '3.>']: "
            f"subject token '3.>' contains '.'; a token is one level of a subject, so a value "
            f"with dots would publish to a different subject; nothing was published")
        assert await message_count(js, stream) == 0

    async def test_an_event_over_max_payload_stops_the_batch_before_sending(
            self, js: JetStreamContext, nc: Client, stream: Stream) -> None:
        huge = "x" * (nc.max_payload + 1)
        batch = [Scoped(stream.prefix, "ok", "1"), Scoped(stream.prefix, "big", huge)]
        with pytest.raises(PublishError) as caught:
            await publish_many(js, batch)
        message = str(caught.value)
        assert message.startswith("events[1]: the event for ")
        assert f"over the server's max_payload of {nc.max_payload} bytes" in message
        assert message.endswith("nothing of the batch was published")
        assert await message_count(js, stream) == 0
        assert nc.is_connected  # the server never saw it, so it did not close the connection

    async def test_failures_are_reported_with_the_acks(
            self, js: JetStreamContext, stream: Stream, unique_name: Callable[..., str]) -> None:
        nowhere = unique_name("nowhere")
        batch = [Scoped(stream.prefix, "a", "0"), Scoped(nowhere, "a", "1"),
                 Scoped(stream.prefix, "a", "2"), Scoped(nowhere, "a", "3")]
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(js, batch)
        error = caught.value
        assert sorted(error.failures) == [1, 3]
        assert all(isinstance(e, NoStreamError) for e in error.failures.values())
        assert [ack.seq if ack else None for ack in error.acks] == [1, None, 2, None]
        assert error.subject == f"{nowhere}.a.1"
        assert str(error) == (
            f"2 of 4 events were not stored: events[1] {error.failures[1]}; events[3] "
            f"{error.failures[3]}. The others were stored (their acks are on .acks); republish "
            f"only .failures, with msg ids if a retry must not duplicate")
        assert await message_count(js, stream) == 2

    async def test_refusals_do_not_hang(self, js: JetStreamContext,
                                        unique_name: Callable[..., str]) -> None:
        # nats-py 2.16's publish_async never resolves these; publish_many must report them.
        async with limited_stream(js, unique_name, max_msgs=2) as prefix:
            batch = [Scoped(prefix, "a", str(i)) for i in range(4)]
            with pytest.raises(BatchPublishError) as caught:
                await asyncio.wait_for(publish_many(js, batch, timeout=2), 5)
        assert sorted(caught.value.failures) == [2, 3]
        assert "maximum messages exceeded (code 503, err_code 10077)" in str(caught.value)

    async def test_a_single_failure(self, js: JetStreamContext,
                                    unique_name: Callable[..., str]) -> None:
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(js, [Scoped(unique_name("nowhere"), "a", "1")])
        assert caught.value.acks == [None]
        assert isinstance(caught.value.failures[0], NoStreamError)

    async def test_no_acks_in_time(self, nc: Client, js: JetStreamContext,
                                   unique_name: Callable[..., str]) -> None:
        prefix = unique_name("silent")
        silent = await nc.subscribe(f"{prefix}.>")
        batch = [Scoped(prefix, "a", str(i)) for i in range(3)]
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(js, batch, timeout=0.2)
        await silent.unsubscribe()
        assert caught.value.acks == [None, None, None]
        assert str(caught.value.failures[0]) == (
            f"'{prefix}.a.0': no ack within 0.2s; the server may or may not have stored it")

    async def test_a_closed_connection(self, nats_url: str,
                                       unique_name: Callable[..., str]) -> None:
        closed = await nats.connect(nats_url)
        await closed.close()
        prefix = unique_name("closed")
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(closed.jetstream(), [Scoped(prefix, "a", "1"),
                                                    Scoped(prefix, "a", "2")])
        assert caught.value.acks == [None, None]
        assert str(caught.value.failures[1]) == (
            f"'{prefix}.a.2': not sent, after: the connection failed (ConnectionClosedError())")
        with pytest.raises(PublishError, match=r"^publishing to '.*\.a\.1' failed: "
                                               r"ConnectionClosedError\(\)$"):
            await Scoped(prefix, "a", "1").publish(closed.jetstream())

    async def test_a_reply_that_is_not_an_ack(self, nc: Client, js: JetStreamContext,
                                              unique_name: Callable[..., str]) -> None:
        prefix = unique_name("impostor")

        async def answer(msg: Msg) -> None:
            await msg.respond(b"hello")

        await nc.subscribe(f"{prefix}.>", cb=answer)
        with pytest.raises(BatchPublishError) as caught:
            await publish_many(js, [Scoped(prefix, "a", "1"), Scoped(prefix, "a", "2")])
        assert str(caught.value.failures[1]) == (
            f"the reply on '{prefix}.a.2' is not a JetStream ack: b'hello'; is a core "
            f"subscriber answering on this subject?")


async def next_on(wiretap: Subscription, prefix: str) -> Msg:
    """The next message the wiretap saw under ``prefix`` (acks and API traffic skipped)."""
    while True:
        msg = await wiretap.next_msg(timeout=2)
        if msg.subject.startswith(f"{prefix}."):
            return msg


class TestSubjectInjectionOnTheServer:
    """What reaches the server is exactly the computed subject, or nothing at all."""

    @settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
    @given(token=subject_tokens())
    async def test_a_token_lands_exactly_or_nothing_is_sent(
            self, nc: Client, js: JetStreamContext, stream: Stream, token: str) -> None:
        wiretap = await nc.subscribe(">")
        try:
            event = Probe(stream.prefix, token)
            if token_is_valid(token):
                await event.publish(js)
                msg = await next_on(wiretap, stream.prefix)
                assert msg.subject == f"{stream.prefix}.probe.{token}.end"
            else:
                with pytest.raises(SubjectError):
                    await event.publish(js)
            await nc.publish(f"{stream.prefix}.marker", b"")
            assert (await next_on(wiretap, stream.prefix)).subject == f"{stream.prefix}.marker"
        finally:
            await wiretap.unsubscribe()
