"""Routers with dependencies: a method placed in a ``Router`` inside a Service class runs on
the serving instance (its constructor's dependencies), and a Service class whose events have
absolute subjects can be mounted. Run through the real consumer by ``ServiceHarness``."""

from __future__ import annotations

import attrs
import pytest

from amebus import ConfigurationError, Event, Route, Router, Service
from amebus.testing import ServiceHarness


@attrs.frozen
class OrderPaid(Event):
    subject_pattern = "order.paid.*"
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return ("order", "paid", self.order_id)


@attrs.frozen
class OrderCancelled(Event):
    subject = "order.cancelled"
    order_id: str


class Ledger:
    """A dependency given to the constructor."""

    def __init__(self) -> None:
        self.lines: list[str] = []


class Orders(Service):
    stream = "ORDERS"

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    async def _paid(self, event: OrderPaid) -> None:
        self.ledger.lines.append(f"paid {event.order_id}")

    async def _refund(self, payload: bytes) -> None:
        self.ledger.lines.append(f"refund {payload.decode()}")

    order = Router("order", paid=Route("paid.*", _paid),
                   refund=Router("refund", issued=Route("issued", _refund)))


class TestRouterMethods:
    async def test_a_method_in_a_router_reaches_the_constructor_dependencies(self) -> None:
        ledger = Ledger()
        harness = ServiceHarness(Orders(ledger))
        paid = await harness.feed(OrderPaid("7"))
        refund = await harness.feed("order.refund.issued", b"7")
        assert (paid.route, refund.route) == ("order.paid", "order.refund.issued")
        assert [paid.decision.action, refund.decision.action] == ["ack", "ack"]  # type: ignore[union-attr]
        assert ledger.lines == ["paid 7", "refund 7"]

    def test_the_route_table_reads_it_as_a_method(self) -> None:
        route = Orders.resolve("order.paid.1")
        assert route is not None and route.is_method and route.event is OrderPaid

    async def test_a_subclass_inherits_the_router_methods(self) -> None:
        class Audited(Orders):
            pass

        ledger = Ledger()
        outcome = await ServiceHarness(Audited(ledger)).feed(OrderPaid("8"))
        assert outcome.decision.action == "ack"  # type: ignore[union-attr]
        assert ledger.lines == ["paid 8"]

    def test_a_module_function_in_a_router_stays_a_function(self) -> None:
        async def on_paid(event: OrderPaid) -> None: ...

        class Plain(Service):
            order = Router("order", paid=Route("paid.*", on_paid))

        route = Plain.resolve("order.paid.1")
        assert route is not None and not route.is_method


class Billing(Service):
    """Its events have absolute subjects (order.paid.*, order.cancelled)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    @Route(OrderPaid)
    async def paid(self, event: OrderPaid) -> None:
        self.seen.append(f"paid {event.order_id}")

    @Route("order.cancelled")
    async def cancelled(self, event: OrderCancelled) -> None:
        self.seen.append(f"cancelled {event.order_id}")

    @Route("invoice.*")
    async def invoice(self, payload: bytes) -> None:
        self.seen.append(f"invoice {payload.decode()}")


class TestMountingEventRoutes:
    def test_mounting_a_service_whose_events_have_absolute_subjects(self) -> None:
        class Shop(Service):
            stream = "ORDERS"
            billing = Router("billing", svc=Billing)

        assert sorted((r.name, r.pattern) for r in Shop.routes) == [
            ("billing.svc.cancelled", "order.cancelled"),   # the event's subject, as declared
            ("billing.svc.invoice", "billing.invoice.*"),   # bytes: the prefix applies
            ("billing.svc.paid", "order.paid.*"),
        ]

    async def test_the_mounted_routes_run_on_an_instance_of_the_mounted_class(self) -> None:
        class Shop(Service):
            stream = "ORDERS"
            billing = Router("billing", svc=Billing)

        harness = ServiceHarness(Shop())
        outcomes = [await harness.feed(OrderPaid("1")), await harness.feed(OrderCancelled("2")),
                    await harness.feed("billing.invoice.3", b"3")]
        assert [o.route for o in outcomes] == [
            "billing.svc.paid", "billing.svc.cancelled", "billing.svc.invoice"]
        assert [o.decision.action for o in outcomes] == ["ack"] * 3  # type: ignore[union-attr]

    def test_an_event_route_placed_under_a_prefix_by_hand_is_still_refused(self) -> None:
        async def on_paid(event: OrderPaid) -> None: ...

        with pytest.raises(ConfigurationError, match="can never match them"):
            class Shop(Service):
                eu = Router("eu", paid=Route(OrderPaid, on_paid))
