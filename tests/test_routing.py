"""Declaring routes: ``Route``, ``Router``, the ``Service`` metaclass, typed handlers and
``filter_subjects``; one test class per rule of the spec.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from strategies import (
    regex_matches,
    route_sets,
    subjects_near,
    witness_subjects,
)

from amebus import ConfigurationError, Event, Route, Router, Service, SubjectError
from amebus.codec import default_codec
from amebus.subjects import specificity

# -- fixtures at module level, so handler annotations resolve -------------------------------


@attrs.frozen
class OrderPaid(Event):
    subject = "order.paid"
    order_id: str


@attrs.frozen
class OrderShipped(Event):
    subject_pattern = "order.shipped.*"
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return ("order", "shipped", self.order_id)


@attrs.frozen
class Computed(Event):
    """Computes its subject and declares no subject_pattern."""

    key: str

    def subject(self) -> tuple[str, ...]:
        return ("computed", self.key)


@attrs.define
class FakeMsg:
    """What the runtime reads of a nats-py message."""

    subject: str
    data: bytes = b""
    headers: dict[str, str] | None = None


async def handle(msg: Any) -> Any:
    return ("async", msg.subject)


def handle_sync(msg: Any) -> Any:
    return ("sync", msg.subject)


class Processor:
    async def process(self, msg: Any) -> Any:
        return ("processor", msg.subject)


def run(service: Service, subject: str, data: bytes = b"") -> Any:
    return asyncio.run(service.process(FakeMsg(subject, data)))  # type: ignore[arg-type]


def service_of(routes: list[str], name: str = "Generated") -> Any:
    """A Service subclass built at run time, one function route per pattern."""
    members = {f"r{index}": Route(pattern, handle) for index, pattern in enumerate(routes)}
    return type(name, (Service,), members)


def compiled(cls: Any) -> list[tuple[str, str]]:
    return [(r.name, r.pattern) for r in cls.routes]


# -- declaring ------------------------------------------------------------------------------

class TestRoute:
    """Rule: ``Route(pattern, handler)`` as a class attribute; the handler is an async function,
    a sync function, or an object with an async ``process``."""

    def test_every_kind_of_handler(self) -> None:
        processor = Processor()

        class Shop(Service):
            a = Route("a", handle)
            b = Route("b.*", handle_sync)
            c = Route("c.>", processor)

        assert compiled(Shop) == [("a", "a"), ("b", "b.*"), ("c", "c.>")]
        assert [r.handler for r in Shop.routes] == [handle, handle_sync, processor]
        assert run(Shop(), "a") == ("async", "a")
        assert run(Shop(), "b.x") == ("sync", "b.x")
        assert run(Shop(), "c.x.y") == ("processor", "c.x.y")

    def test_resolve_returns_the_compiled_route_or_none(self) -> None:
        class Shop(Service):
            paid = Route("order.paid", handle, timeout=2.5)

        route = Shop.resolve("order.paid")
        assert route is not None
        assert (route.name, route.pattern, route.tokens) == ("paid", "order.paid",
                                                             ("order", "paid"))
        assert (route.handler, route.timeout, route.is_method) == (handle, 2.5, False)
        assert Shop.resolve("order.cancelled") is None
        assert Shop.filter_subjects == ("order.paid",)

    def test_a_service_without_routes(self) -> None:
        class Empty(Service):
            pass

        assert (Empty.routes, Empty.filter_subjects, Empty.resolve("a")) == ((), (), None)
        assert (Service.routes, Service.filter_subjects) == ((), ())


class TestDecorator:
    """Rule: ``@Route(pattern)`` on a method binds the handler to the serving instance."""

    def test_the_method_is_called_on_the_instance(self) -> None:
        class Shop(Service):
            def __init__(self, tag: str) -> None:
                self.tag = tag

            @Route("order.paid")
            async def on_paid(self, msg: Msg) -> Any:
                return (self.tag, msg.subject)

        assert isinstance(Shop.on_paid, Route)
        route = Shop.resolve("order.paid")
        assert route is not None and route.is_method and route.name == "on_paid"
        assert run(Shop("eu"), "order.paid") == ("eu", "order.paid")
        assert run(Shop("us"), "order.paid") == ("us", "order.paid")

    def test_the_instance_attribute_reads_as_the_bound_method(self) -> None:
        class Shop(Service):
            @Route("order.paid")
            def on_paid(self, msg: Msg) -> Any:
                return self

        shop = Shop()
        assert shop.on_paid(None) is shop  # type: ignore[arg-type]


class TestRouter:
    """Rule: ``Router(prefix, **members)`` nests routes under a prefix (``*`` allowed, ``>`` only
    as the last token of a leaf pattern); a router is reusable; a Service class mounts in one."""

    def test_prefixes_join_and_names_are_attribute_paths(self) -> None:
        class Shop(Service):
            order = Router("order",
                           paid=Route("paid", handle),
                           region=Router("*", shipped=Route("shipped.>", handle)))
            plain = Router("", invoice=Route("invoice", handle))

        assert sorted(compiled(Shop)) == [("order.paid", "order.paid"),
                                          ("order.region.shipped", "order.*.shipped.>"),
                                          ("plain.invoice", "invoice")]
        assert Shop.resolve("order.eu.shipped.1").name == "order.region.shipped"  # type: ignore[union-attr]

    def test_a_router_is_reusable_in_services_and_under_prefixes(self) -> None:
        orders = Router("order", paid=Route("paid", handle), cancelled=Route("cancelled", handle))

        class Shop(Service):
            order = orders

        class Regional(Service):
            eu = Router("eu", orders=orders)
            us = Router("us", orders=orders)

        assert {p for _, p in compiled(Shop)} == {"order.paid", "order.cancelled"}
        assert {p for _, p in compiled(Regional)} == {
            "eu.order.paid", "eu.order.cancelled", "us.order.paid", "us.order.cancelled"}
        assert Regional.resolve("us.order.paid").name == "us.orders.paid"  # type: ignore[union-attr]

    def test_a_service_class_mounts_in_a_router(self) -> None:
        class Billing(Service):
            invoice = Route("invoice.*", handle)
            refund = Route("refund", handle_sync)

        class Shop(Service):
            billing = Router("billing", svc=Billing)
            order = Route("order", handle)

        assert sorted(compiled(Shop)) == [("billing.svc.invoice", "billing.invoice.*"),
                                          ("billing.svc.refund", "billing.refund"),
                                          ("order", "order")]
        assert compiled(Billing) == [("refund", "refund"), ("invoice", "invoice.*")]
        assert run(Shop(), "billing.refund") == ("sync", "billing.refund")

    def test_a_mounted_services_methods_get_an_instance_of_their_own_class(self) -> None:
        class Billing(Service):
            currency = "EUR"

            @Route("invoice")
            async def on_invoice(self, msg: Msg) -> Any:
                return self.currency

        class Shop(Service):
            billing = Router("billing", svc=Billing)

        assert run(Shop(), "billing.invoice") == "EUR"

    def test_a_mounted_service_whose_methods_need_constructor_arguments(self) -> None:
        class Billing(Service):
            def __init__(self, db: object) -> None:
                self.db = db

            @Route("invoice")
            async def on_invoice(self, msg: Msg) -> Any:
                return self.db

        class Shop(Service):
            billing = Router("billing", svc=Billing)

        with pytest.raises(ConfigurationError) as info:
            run(Shop(), "billing.invoice")
        assert "Shop mounts Billing, whose method routes need an instance" in str(info.value)
        assert "give it a constructor without required arguments" in str(info.value)

    def test_a_plain_method_may_not_hide_an_inherited_route(self) -> None:
        class Base(Service):
            @Route("order.paid")
            async def paid(self, msg: Msg) -> None: ...

        with pytest.raises(ConfigurationError) as info:
            class Child(Base):
                async def paid(self, msg: Msg) -> None: ...
        assert "Child.paid overrides the inherited route" in str(info.value)
        assert "decorate it with @Route('order.paid')" in str(info.value)
        assert "set `paid = None` to drop it" in str(info.value)

    def test_a_member_that_is_not_a_route(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            Router("order", paid=handle)  # type: ignore[arg-type]
        assert "Router('order') member paid=" in str(info.value)
        assert "wrap a handler as paid=Route('pattern', handler)" in str(info.value)

    @pytest.mark.parametrize("prefix", ["order.>", ">", "a.>.b"])
    def test_a_prefix_never_holds_the_tail_wildcard(self, prefix: str) -> None:
        with pytest.raises(SubjectError) as info:
            Router(prefix)
        assert repr(prefix) in str(info.value)
        assert "'>' may only end a route's own pattern, not a router prefix" in str(info.value)


class TestInheritance:
    """Rule: the metaclass walks the MRO: a subclass inherits routes, overrides one by its
    attribute name, and drops one with ``name = None``."""

    def test_inherit_override_drop_and_add_again(self) -> None:
        class Base(Service):
            paid = Route("order.paid", handle)
            cancelled = Route("order.cancelled", handle)

        class Child(Base):
            paid = Route("order.paid.*", handle_sync)
            cancelled = None

        class Grandchild(Child):
            cancelled = Route("order.cancelled.>", handle)

        assert compiled(Base) == [("cancelled", "order.cancelled"), ("paid", "order.paid")]
        assert compiled(Child) == [("paid", "order.paid.*")]
        assert compiled(Grandchild) == [("paid", "order.paid.*"),
                                        ("cancelled", "order.cancelled.>")]
        assert Child.resolve("order.paid") is None

    def test_the_mro_decides_between_mixins(self) -> None:
        class Left(Service):
            x = Route("left", handle)

        class Right(Service):
            x = Route("right", handle)
            y = Route("y", handle)

        class Dropper(Service):
            y = None

        class Both(Left, Right):
            pass

        class Dropped(Dropper, Right):
            pass

        assert compiled(Both) == [("x", "left"), ("y", "y")]
        assert compiled(Dropped) == [("x", "right")]

    def test_an_inherited_method_route_stays_a_method(self) -> None:
        class Base(Service):
            @Route("order.paid")
            async def on_paid(self, msg: Msg) -> Any:
                return type(self).__name__

        class Child(Base):
            pass

        assert run(Child(), "order.paid") == "Child"


# -- precedence -----------------------------------------------------------------------------

class TestPrecedence:
    """Rule: the most specific pattern wins: token by token from the left, at the first
    differing position a literal beats ``*`` and ``*`` beats ``>``; independent of the
    declaration order."""

    def test_the_seed_example(self) -> None:
        class Shop(Service):
            invoice = Route("invoice", handle)
            paid_any = Route("order.paid.*", handle)
            order = Router("order", paid=Route("paid", handle),
                           cancelled=Route("cancelled", handle))

        table = {"invoice": "invoice", "order.paid": "order.paid",
                 "order.paid.1": "paid_any", "order.cancelled": "order.cancelled",
                 "order.shipped": None, "order.paid.1.2": None, "order": None}
        for subject, name in table.items():
            route = Shop.resolve(subject)
            assert (route.name if route else None) == name, subject

    def test_the_seed_example_with_order_cancelled_twice_is_refused(self) -> None:
        with pytest.raises(ConfigurationError) as info:
            class Shop(Service):
                invoice = Route("invoice", handle)
                paid_any = Route("order.paid.*", handle)
                cancelled = Route("order.cancelled", handle)
                order = Router("order", paid=Route("paid", handle),
                               cancelled=Route("cancelled", handle))
        message = str(info.value)
        assert "routes 'cancelled' and 'order.cancelled' both have the pattern" in message
        assert "'order.cancelled'" in message
        assert "remove one" in message

    @given(route_sets().flatmap(lambda routes: st.tuples(
        st.just(routes), st.permutations(routes), st.lists(subjects_near(routes), max_size=20))))
    def test_independent_of_declaration_order(
            self, case: tuple[list[str], list[str], list[str]]) -> None:
        routes, shuffled, subjects = case
        first, second = service_of(routes), service_of(shuffled)
        assert [r.pattern for r in first.routes] == [r.pattern for r in second.routes]
        assert first.filter_subjects == second.filter_subjects
        for subject in subjects:
            a, b = first.resolve(subject), second.resolve(subject)
            assert (a and a.pattern) == (b and b.pattern)
            candidates = [p for p in routes if regex_matches(p, subject)]
            best = min(candidates, key=lambda p: specificity(p.split("."))) if candidates else None
            assert (a and a.pattern) == best

    @given(route_sets())
    def test_routes_are_listed_most_specific_first(self, routes: list[str]) -> None:
        listed = [r.tokens for r in service_of(routes).routes]
        assert listed == sorted(listed, key=lambda t: (specificity(t), t))
        assert sorted(".".join(t) for t in listed) == sorted(routes)


# -- errors at class creation ---------------------------------------------------------------

def raised(error: type[Exception], make: Callable[[], object]) -> str:
    with pytest.raises(error) as info:
        make()
    return str(info.value)


class TestDeclarationErrors:
    """Rule: mistakes fail when the class is created, with a message that quotes the names or
    patterns and names the fix."""

    @pytest.mark.parametrize("pattern", ["order..paid", "order.>.paid", "order. paid", ""])
    def test_an_invalid_pattern(self, pattern: str) -> None:
        message = raised(SubjectError, lambda: Route(pattern, handle))
        assert repr(pattern) in message

    def test_two_routes_with_one_pattern_in_a_class(self) -> None:
        def make() -> object:
            class Shop(Service):
                a = Route("order.*", handle)
                b = Router("order", star=Route("*", handle))
            return Shop

        message = raised(ConfigurationError, make)
        assert "Shop: routes 'a' and 'b.star' both have the pattern 'order.*'" in message
        assert "remove one" in message

    def test_a_subclass_route_repeating_an_inherited_pattern(self) -> None:
        class Base(Service):
            paid = Route("order.paid", handle)

        def make() -> object:
            class Child(Base):
                paid_again = Route("order.paid", handle)
            return Child

        message = raised(ConfigurationError, make)
        assert "routes 'paid' and 'paid_again' both have the pattern 'order.paid'" in message
        assert "drop the inherited one with `paid = None`" in message

    def test_one_route_bound_under_two_names(self) -> None:
        route = Route("order.paid", handle)

        def make() -> object:
            class Shop(Service):
                a = route
                b = route
            return Shop

        message = raised(ConfigurationError, make)
        assert "is bound as both 'a' and 'b'" in message
        assert "create one Route object per attribute" in message

    def test_one_route_bound_in_two_classes_under_two_names(self) -> None:
        class First(Service):
            a = Route("order.paid", handle)

        def make() -> object:
            class Second(Service):
                b = First.a
            return Second

        message = raised(ConfigurationError, make)
        assert "is bound as both 'a' and 'b'" in message

    @pytest.mark.parametrize("handler", [3, "handle", object()])
    def test_a_handler_neither_callable_nor_a_processor(self, handler: object) -> None:
        message = raised(ConfigurationError, lambda: Route("order.paid", handler))
        assert f"Route('order.paid'): handler {handler!r} is not callable" in message
        assert "pass a function, an async function, or an object with" in message

    def test_a_processor_class_instead_of_an_instance(self) -> None:
        message = raised(ConfigurationError, lambda: Route("order.paid", Processor))
        assert "handler Processor is a class; pass an instance" in message
        assert "Route(pattern, Processor())" in message

    def test_a_route_without_a_handler(self) -> None:
        def as_attribute() -> object:
            class Shop(Service):
                paid = Route("order.paid")
            return Shop

        def in_a_router() -> object:
            class Shop(Service):
                order = Router("order", paid=Route("paid"))
            return Shop

        message = raised(ConfigurationError, as_attribute)
        assert "Shop.paid = Route('order.paid', NoneType) has no handler" in message
        assert "pass one as Route(pattern, handler) or use @Route(pattern)" in message
        assert "has no handler; give it one" in raised(ConfigurationError, in_a_router)

    def test_decorating_a_route_that_has_a_handler(self) -> None:
        message = raised(ConfigurationError, lambda: Route("a", handle)(handle_sync))
        assert "use either Route(pattern, handler) or @Route(pattern), not both" in message

    def test_decorating_something_that_is_not_a_function(self) -> None:
        message = raised(ConfigurationError, lambda: Route("a")(Processor()))  # type: ignore[arg-type]
        assert "@Route('a') decorates" in message
        assert "decorate a plain (async) method" in message

    @pytest.mark.parametrize("name", ["routes", "resolve", "filter_subjects", "serve", "process"])
    def test_a_reserved_name(self, name: str) -> None:
        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {name: Route("a", handle)}))
        assert f"Shop.{name} is a reserved Service name" in message
        assert "give the route another attribute name" in message

    @pytest.mark.parametrize("name", ["stream", "timeout", "stats", "batch", "concurrency"])
    def test_a_name_that_would_hide_an_inherited_attribute(self, name: str) -> None:
        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {name: Route("a", handle)}))
        assert f"Shop.{name} = Route('a', handle) would hide the inherited {name!r}" in message
        assert "give the route another attribute name" in message

    @pytest.mark.parametrize("timeout", [0, -1.0])
    def test_a_timeout_not_above_zero(self, timeout: float) -> None:
        message = raised(ConfigurationError, lambda: Route("a", handle, timeout=timeout))
        assert f"Route('a') timeout={timeout!r}: give a number of seconds above 0" in message


# -- typed handlers -------------------------------------------------------------------------

async def takes_paid(event: OrderPaid) -> Any:
    return event


async def takes_paid_and_msg(event: OrderPaid, msg: Msg) -> Any:
    return (event, msg.subject)


async def takes_bytes(payload: bytes) -> Any:
    return payload


async def takes_msg(msg: Msg) -> Any:
    return msg.subject


async def takes_anything(msg, extra=None):  # type: ignore[no-untyped-def]
    return msg.subject


async def takes_varargs(*args: Any) -> Any:
    return len(args)


class PaidProcessor:
    async def process(self, event: OrderPaid, msg: Msg) -> Any:
        return event.order_id


class TestHandlerSignature:
    """Rule: what a handler receives follows its first parameter's annotation: an Event
    subclass (decoded), ``bytes`` (the payload) or ``nats.aio.msg.Msg`` (unannotated: the
    message); a second parameter receives the raw message."""

    @pytest.mark.parametrize(("handler", "takes", "event", "with_message"), [
        (takes_paid, "event", OrderPaid, False),
        (takes_paid_and_msg, "event", OrderPaid, True),
        (takes_bytes, "payload", None, False),
        (takes_msg, "message", None, False),
        (takes_anything, "message", None, False),
        (takes_varargs, "message", None, False),
        (PaidProcessor(), "event", OrderPaid, True),
    ])
    def test_detected_once_at_class_creation(self, handler: Any, takes: str,
                                             event: type[Event] | None,
                                             with_message: bool) -> None:
        cls = type("Shop", (Service,), {"paid": Route("order.paid", handler)})
        route = cls.resolve("order.paid")
        assert (route.takes, route.event, route.with_message) == (takes, event, with_message)

    def test_each_kind_receives_what_it_asked_for(self) -> None:
        class Shop(Service):
            event = Route("order.paid", takes_paid_and_msg)
            payload = Route("raw", takes_bytes)
            message = Route("msg", takes_msg)
            processor = Route("order.*", PaidProcessor())

        data = default_codec.encode(OrderPaid(order_id="7"))
        assert run(Shop(), "order.paid", data) == (OrderPaid(order_id="7"), "order.paid")
        assert run(Shop(), "raw", b"\x00\x01") == b"\x00\x01"
        assert run(Shop(), "msg") == "msg"
        assert run(Shop(), "order.x", data) == "7"

    def test_a_method_skips_self(self) -> None:
        class Shop(Service):
            @Route("order.paid")
            async def on_paid(self, event: OrderPaid, msg: Msg) -> Any:
                return event.order_id

        route = Shop.resolve("order.paid")
        assert (route.takes, route.event, route.with_message) == ("event", OrderPaid, True)  # type: ignore[union-attr]

    def test_an_event_class_gives_the_pattern(self) -> None:
        class Shop(Service):
            paid = Route(OrderPaid, takes_anything)
            shipped = Route(OrderShipped, takes_msg)

        assert Shop.routes[0].pattern == "order.paid"
        assert Shop.routes[1].pattern == "order.shipped.*"
        # an explicit annotation wins: takes_msg asked for the raw message
        assert [(r.takes, r.event) for r in Shop.routes] == [("event", OrderPaid),
                                                             ("message", OrderShipped)]

    @pytest.mark.parametrize("pattern", ["order.*", "*.paid", "order.>", ">"])
    def test_a_pattern_that_can_match_the_events_subjects(self, pattern: str) -> None:
        cls = type("Shop", (Service,), {"paid": Route(pattern, takes_paid)})
        assert cls.routes[0].event is OrderPaid

    @pytest.mark.parametrize("pattern", ["invoice", "order.paid.*", "order", "*.*.*"])
    def test_a_pattern_that_never_matches_the_events_subjects(self, pattern: str) -> None:
        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"paid": Route(pattern, takes_paid)}))
        assert "decodes OrderPaid, whose subjects follow 'order.paid'" in message
        assert f"the route's pattern {pattern!r} can never match them" in message
        assert "fix the route's pattern or the event's subject" in message

    def test_the_full_pattern_is_checked_under_a_router(self) -> None:
        def make() -> object:
            class Shop(Service):
                eu = Router("eu", paid=Route(OrderPaid, takes_paid))
            return Shop

        message = raised(ConfigurationError, make)
        assert "the route's pattern 'eu.order.paid' can never match them" in message

    def test_the_event_of_the_route_and_of_the_handler_differ(self) -> None:
        async def wrong(event: OrderShipped) -> None: ...

        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route(OrderPaid, wrong)}))
        assert "expects OrderShipped but the route is declared for OrderPaid" in message
        assert "make them the same class" in message

    def test_an_event_without_a_pattern(self) -> None:
        message = raised(ConfigurationError, lambda: Route(Computed, handle))
        assert "Route(Computed): the event computes its subject" in message
        assert "add `subject_pattern = 'order.paid.*'` to the event class" in message

    def test_a_class_that_is_not_an_event(self) -> None:
        message = raised(ConfigurationError, lambda: Route(FakeMsg, handle))
        assert "a class pattern must be an amebus.Event subclass" in message
        assert "pass a subject pattern string instead" in message

    def test_a_first_parameter_of_another_type(self) -> None:
        async def wrong(text: str) -> None: ...

        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route("a", wrong)}))
        assert "first parameter 'text' is annotated <class 'str'>" in message
        assert "annotate it with an Event subclass, bytes, or nats.aio.msg.Msg" in message

    def test_a_second_parameter_that_is_not_the_message(self) -> None:
        async def wrong(event: OrderPaid, extra: int) -> None: ...

        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route("order.paid", wrong)}))
        assert "second parameter 'extra' is annotated <class 'int'>" in message
        assert "the second argument is the raw message (nats.aio.msg.Msg)" in message

    def test_too_many_or_no_parameters(self) -> None:
        async def three(a: Msg, b: Msg, c: Msg) -> None: ...
        async def none() -> None: ...

        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route("a", three)}))
        assert "requires 3 arguments" in message and "optionally the raw message" in message
        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route("a", none)}))
        assert "takes no argument; give it one parameter" in message

    def test_an_annotation_that_cannot_be_resolved(self) -> None:
        async def wrong(event: NotImportedAnywhere) -> None: ...  # type: ignore[name-defined]  # noqa: F821

        message = raised(ConfigurationError,
                         lambda: type("Shop", (Service,), {"a": Route("a", wrong)}))
        assert "its annotations cannot be resolved" in message
        assert "import the annotated classes at module level" in message


# -- filter_subjects ------------------------------------------------------------------------

class TestFilterSubjects:
    """Rule: every subject that resolves to a route matches one of ``filter_subjects``, no other
    subject does, no filter covers another, and the order is deterministic; checked by brute
    force over a complete set of witness subjects."""

    @given(route_sets())
    def test_exactly_the_routed_subjects(self, routes: list[str]) -> None:
        cls = service_of(routes)
        filters = cls.filter_subjects
        for subject in witness_subjects(*routes):
            routed = cls.resolve(subject) is not None
            assert routed == any(regex_matches(p, subject) for p in routes)
            assert routed == any(regex_matches(f, subject) for f in filters), subject

    @given(route_sets())
    def test_no_filter_covers_another(self, routes: list[str]) -> None:
        filters = service_of(routes).filter_subjects
        for general in filters:
            for specific in filters:
                if general != specific:
                    witnesses = witness_subjects(general, specific)
                    assert not all(regex_matches(general, s) for s in witnesses
                                   if regex_matches(specific, s)), (general, specific)

    @given(route_sets().flatmap(lambda routes: st.tuples(st.just(routes),
                                                         st.permutations(routes))))
    def test_sorted_and_independent_of_declaration_order(
            self, case: tuple[list[str], list[str]]) -> None:
        routes, shuffled = case
        filters = service_of(routes).filter_subjects
        assert filters == service_of(shuffled).filter_subjects
        assert list(filters) == sorted(filters)
        assert set(filters) <= set(routes)

    @pytest.mark.parametrize(("routes", "filters"), [
        (["order.paid", "order.>"], ("order.>",)),
        (["order.*", "order.paid", "order.paid.*"], ("order.*", "order.paid.*")),
        (["a.*.c", "a.b.*"], ("a.*.c", "a.b.*")),
        ([">", "a", "b.c"], (">",)),
    ])
    def test_examples(self, routes: list[str], filters: tuple[str, ...]) -> None:
        assert service_of(routes).filter_subjects == filters
