"""A service with a dependency: the sqlite3 database it keeps stock in, given to its constructor.

Run it: ``python examples/inventory_sqlite.py`` (embedded server, in-memory database), or serve
it against your own server and database file through the factory::

    INVENTORY_DB=stock.db amebus run examples/inventory_sqlite.py:make_service --server URL
"""

from __future__ import annotations

import asyncio
import os
import sqlite3

import attrs
import nats
from nats.aio.msg import Msg

from amebus import Event, Route, Service, Term
from amebus.testing import NatsServer


@attrs.frozen
class StockReceived(Event):
    subject_pattern = "stock.received.*"
    sku: str
    quantity: int

    def subject(self) -> tuple[str, ...]:
        return ("stock", "received", self.sku)


@attrs.frozen
class StockReserved(Event):
    subject_pattern = "stock.reserved.*"
    sku: str
    quantity: int
    order_id: str

    def subject(self) -> tuple[str, ...]:
        return ("stock", "reserved", self.sku)


def open_db(path: str = ":memory:") -> sqlite3.Connection:
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE IF NOT EXISTS stock (sku TEXT PRIMARY KEY, on_hand INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS applied (seq INTEGER PRIMARY KEY);  -- stream sequences
    """)
    return db


class Inventory(Service):
    stream = "STOCK"
    stream_subjects = ("stock.>",)

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db  # one instance per database: tests pass an in-memory one

    def _first_time(self, msg: Msg) -> bool:
        """Record the stream sequence in the same transaction as the change: a redelivery
        (the ack was lost after the commit) is then recognised and only acked again."""
        seq = msg.metadata.sequence.stream
        return self.db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (seq,)).rowcount == 1

    # Plain (not async) handlers run on the event loop: fine for a quick local sqlite write.
    @Route(StockReceived)
    def received(self, event: StockReceived, msg: Msg) -> None:
        with self.db:  # one transaction, committed before amebus acks
            if self._first_time(msg):
                self.db.execute(
                    "INSERT INTO stock VALUES (?, ?) "
                    "ON CONFLICT (sku) DO UPDATE SET on_hand = on_hand + excluded.on_hand",
                    (event.sku, event.quantity))

    @Route(StockReserved)
    def reserved(self, event: StockReserved, msg: Msg) -> None:
        with self.db:
            row = self.db.execute("SELECT on_hand FROM stock WHERE sku = ?",
                                  (event.sku,)).fetchone()
            on_hand = row[0] if row else 0
            if on_hand < event.quantity:  # retrying cannot help: term, with the reason
                print(f"  order {event.order_id}: {event.quantity} x {event.sku} refused, "
                      f"{on_hand} on hand")
                raise Term(f"only {on_hand} {event.sku} on hand")
            if self._first_time(msg):
                self.db.execute("UPDATE stock SET on_hand = on_hand - ? WHERE sku = ?",
                                (event.quantity, event.sku))
                print(f"  order {event.order_id}: reserved {event.quantity} x {event.sku}")


def make_service() -> Inventory:
    """The factory ``amebus run`` calls: a service needing arguments cannot be built bare."""
    return Inventory(open_db(os.environ.get("INVENTORY_DB", "inventory.db")))


async def main() -> None:
    db = open_db()
    async with NatsServer() as server:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1)
        js = nc.jetstream()
        service = Inventory(db)
        ready = asyncio.Event()
        serving = asyncio.create_task(service.serve(js, ready=ready))
        await ready.wait()
        for event in (StockReceived("widget", 10), StockReceived("gadget", 3),
                      StockReserved("widget", 4, "A-1"), StockReserved("gadget", 5, "A-2"),
                      StockReserved("widget", 6, "A-3"), StockReserved("widget", 1, "A-4")):
            await event.publish(js)
        while (await js.consumer_info("STOCK", "Inventory")).num_ack_pending or (
                await js.consumer_info("STOCK", "Inventory")).num_pending:
            await asyncio.sleep(0.05)
        serving.cancel()
        await asyncio.gather(serving, return_exceptions=True)
        await nc.close()
    total = service.stats.total()
    print(f"acked {total.acked}, termed {total.termed}")
    for sku, on_hand in db.execute("SELECT sku, on_hand FROM stock ORDER BY sku"):
        print(f"stock {sku}: {on_hand}")


if __name__ == "__main__":
    asyncio.run(main())
