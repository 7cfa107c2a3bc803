"""The seed's complete JetStream consumer example, translated: an order service.

Run it: ``python examples/orders.py`` (after ``pip install -e '.[server]'`` in a clone). It
starts an embedded nats-server, serves ``OrderService``, publishes a burst of events and prints what
happened to each one: where it was routed, and whether it was acked, retried, termed or
dead-lettered. It exits in about two seconds.

The Rust original::

    jet_route![
        input,
        ["invoice"] => (&self.invoice_processor),
        ["order", "paid", "*"] => (&self.order_paid_processor),
        ["order", "cancelled"] => (&self.order_cancelled_processor),
        ["order"] => [
            ["paid"] => (&self.order_paid_processor),
            ["cancelled"] => (&self.order_cancelled_processor)
        ]
    ]
"""

from __future__ import annotations

import asyncio
import enum
import json
from collections import Counter
from datetime import UTC, datetime

import attrs
import nats
from nats.js import JetStreamContext

from amebus import Decision, DecodeError, Event, Failure, Nak, Route, Router, Service, Term
from amebus.testing import NatsServer

# -- events: attrs classes that know their subject ----------------------------------------


class Currency(enum.Enum):
    EUR = "EUR"
    USD = "USD"


class CancelReason(enum.Enum):
    CUSTOMER = "customer"
    OUT_OF_STOCK = "out_of_stock"


@attrs.frozen
class Customer:
    id: str
    email: str


@attrs.frozen
class Invoice(Event):
    subject = "invoice"
    invoice_id: str
    order_id: str
    total_cents: int
    currency: Currency


@attrs.frozen
class OrderPaid(Event):
    subject_pattern = "order.paid.*"  # what subject() returns, so routes can be checked
    order_id: str
    amount_cents: int
    currency: Currency
    customer: Customer
    paid_at: datetime

    def subject(self) -> tuple[str, ...]:
        return ("order", "paid", self.order_id)


@attrs.frozen
class LegacyOrderPaid(Event):
    """What the old checkout still publishes: the id is in the payload, not the subject."""

    subject = "order.paid"
    order_id: str
    amount: float
    currency: str


@attrs.frozen
class OrderCancelled(Event):
    subject = "order.cancelled"
    order_id: str
    reason: CancelReason
    note: str | None = None


# -- processors: the seed's order_paid_processor, invoice_processor, ... ------------------


def show(subject: str, route: str, text: str) -> None:
    print(f"  {subject:<18} {route:<16} {text}")


class InvoiceProcessor:
    """Renders the invoice; the PDF renderer fails the first time it sees each invoice."""

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()

    async def process(self, invoice: Invoice) -> None:
        self.attempts[invoice.invoice_id] += 1
        if self.attempts[invoice.invoice_id] == 1:
            raise ConnectionError("PDF renderer unavailable")  # retried after the backoff
        show("invoice", "invoice", f"rendered {invoice.invoice_id} -> ack")


class OrderPaidProcessor:
    """Books a payment; rejects impossible ones, and depends on a flaky fraud check."""

    async def process(self, paid: OrderPaid) -> None:
        subject = f"order.paid.{paid.order_id}"
        if paid.amount_cents <= 0:
            show(subject, "order_paid", f"amount {paid.amount_cents} -> Term (never retried)")
            raise Term(f"amount must be positive, got {paid.amount_cents}")
        if paid.customer.id == "c-timeout":
            raise TimeoutError("fraud check did not answer")  # fails on every delivery
        money = f"{paid.amount_cents / 100:.2f} {paid.currency.value}"
        show(subject, "order_paid", f"booked {money} for {paid.customer.email} -> ack")


class LegacyPaidUpgrader:
    """Turns the old ``order.paid`` event into the new one; amebus publishes it, then acks."""

    async def process(self, old: LegacyOrderPaid) -> OrderPaid:
        new = OrderPaid(order_id=old.order_id, amount_cents=round(old.amount * 100),
                        currency=Currency(old.currency),
                        customer=Customer(id="legacy", email="unknown@example.com"),
                        paid_at=datetime.now(UTC))
        show("order.paid", "order.paid", f"upgraded -> publish order.paid.{old.order_id}, ack")
        return new


class OrderCancelledProcessor:
    """Refunds a cancelled order; the refund gateway asks us to come back once."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()

    async def process(self, cancelled: OrderCancelled) -> None:
        self.seen[cancelled.order_id] += 1
        if self.seen[cancelled.order_id] == 1:
            show("order.cancelled", "order.cancelled", "gateway busy -> Nak(0.3), redelivered")
            raise Nak(0.3)
        show("order.cancelled", "order.cancelled",
             f"refunded {cancelled.order_id} ({cancelled.reason.value}) -> ack")


# -- the service ---------------------------------------------------------------------------


class OrderService(Service):
    stream = "ORDERS"
    stream_subjects = ("invoice", "order.>")  # amebus creates the stream if it is missing
    max_deliver = 3
    backoff = (0.2,)  # seconds before each retry (the last value repeats); short for the demo
    dead_letter_subject = "dead.orders"
    dead_letter_stream = "DEAD_ORDERS"  # created with dead.orders if no stream captures it

    # Basic routes
    invoice = Route("invoice", InvoiceProcessor())
    order_paid = Route("order.paid.*", OrderPaidProcessor())

    # Nested routes. Flattened, the seed's ["order"] => [["paid"], ["cancelled"]] is
    # `order.paid` and `order.cancelled`. `order.paid` is a subject of its own (`order.paid.*`
    # needs a third token), so it stays. `order.cancelled` repeats the basic route
    # ["order", "cancelled"]: jet_route! takes the first match, so the seed's nested copy can
    # never run, and amebus refuses two routes with one pattern when the class is created
    # (ConfigurationError). So the route is declared once, here, in the router.
    order = Router(
        "order",
        paid=Route("paid", LegacyPaidUpgrader()),
        cancelled=Route("cancelled", OrderCancelledProcessor()),
    )


class PrintingTracer:
    """An ErrorTracer: sees every failure with the decision amebus is about to take."""

    def trace(self, failure: Failure) -> Decision | None:
        decision = failure.decision
        if decision.action == "nak":
            outcome = f"nak, retry in {decision.delay:g}s"
        else:
            outcome = "term, dead-lettered" if decision.dead_letter else "term"
        error = failure.error
        why = "; ".join(error.errors) if isinstance(error, DecodeError) else str(error)
        show(failure.subject, failure.route or "(no route)",
             f"{failure.stage} failure, delivery {failure.deliveries}: "
             f"{type(error).__name__}: {why} -> {outcome}")
        return None  # keep amebus's decision


# -- the demo ------------------------------------------------------------------------------


def burst() -> list[Event]:
    customer = Customer(id="c-1", email="ada@example.com")
    now = datetime(2025, 3, 14, 9, 26, tzinfo=UTC)
    return [
        OrderPaid("1001", 4_990, Currency.EUR, customer, now),
        Invoice("INV-1", "1001", 4_990, Currency.EUR),
        OrderPaid("1002", 1_250, Currency.USD, Customer("c-2", "bob@example.com"), now),
        OrderPaid("1003", -500, Currency.EUR, customer, now),  # rejected: Term
        OrderPaid("1004", 9_900, Currency.EUR, Customer("c-timeout", "eve@example.com"), now),
        LegacyOrderPaid("1005", 19.99, "EUR"),  # upgraded and republished
        OrderCancelled("1002", CancelReason.CUSTOMER, note="changed their mind"),
    ]


async def wait_until_settled(js: JetStreamContext, timeout: float = 15.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        info = await js.consumer_info("ORDERS", "OrderService")
        dead = await js.stream_info("DEAD_ORDERS")
        if info.num_pending == 0 and info.num_ack_pending == 0 and dead.state.messages >= 2:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError("the burst was not settled in time")


async def main() -> None:
    async with NatsServer() as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1)
        js = nc.jetstream()

        print("routes, by precedence:")
        for route in OrderService.routes:
            print(f"  {route.pattern:<18} {route.name}")

        service = OrderService()
        ready = asyncio.Event()
        serving = asyncio.create_task(service.serve(js, ready=ready, error_tracer=PrintingTracer()))
        await ready.wait()

        print("\nwhat happened:")
        for event in burst():
            await event.publish(js)
        # A producer with another schema: order_id is a number, and amount is missing.
        await js.publish("order.paid.1006", json.dumps({"order_id": 1006}).encode())
        await wait_until_settled(js)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)

        print("\nper route:")
        for name, stats in service.stats.routes.items():
            print(f"  {name:<16} handled {stats.handled}, acked {stats.acked}, naked "
                  f"{stats.naked}, termed {stats.termed}, dead-lettered {stats.dead_lettered}")

        print("\ndead letters (stream DEAD_ORDERS):")
        for seq in range(1, (await js.stream_info("DEAD_ORDERS")).state.messages + 1):
            msg = await js.get_msg("DEAD_ORDERS", seq)
            headers = msg.headers or {}
            print(f"  {headers['Amebus-Original-Subject']} (stage {headers['Amebus-Stage']}, "
                  f"deliveries {headers['Amebus-Deliveries']}): {(msg.data or b'').decode()}")
            print(f"    Amebus-Error: {headers['Amebus-Error'][:90]}")
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
