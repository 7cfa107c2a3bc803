"""Serve an amebus Service inside a Starlette app's lifespan (FastAPI's ``lifespan=`` is the
same function): the consumer runs while the app runs, and stops gracefully with it.

Run it: ``python examples/starlette_lifespan.py`` (after ``pip install -e '.[dev]'`` in a
clone, for starlette and httpx). It starts an embedded nats-server, enters the app's
lifespan as an ASGI server would, posts three orders through httpx's in-process ASGI
transport, which the app publishes as events, and reads the totals the Service booked from
``/stats``. In production, run the same app with an ASGI server: ``uvicorn module:app``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator

import attrs
import httpx
import nats
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route as HttpRoute

from amebus import Event, Route, Service
from amebus.testing import NatsServer


@attrs.frozen
class OrderPaid(Event):
    subject_pattern = "shop.paid.*"
    order_id: str
    amount_cents: int

    def subject(self) -> tuple[str, ...]:
        return ("shop", "paid", self.order_id)


class Bookkeeping(Service):
    stream = "SHOP"
    stream_subjects = ("shop.>",)

    def __init__(self) -> None:
        self.total_cents = 0
        self.orders: list[str] = []

    @Route(OrderPaid)
    async def paid(self, event: OrderPaid) -> None:
        self.total_cents += event.amount_cents
        self.orders.append(event.order_id)


def make_app(nats_url: str) -> Starlette:
    """The web app; the Service serves for exactly as long as the app's lifespan."""
    books = Bookkeeping()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nc = await nats.connect(nats_url, max_reconnect_attempts=-1)
        try:
            async with books.running(nc.jetstream()):  # returns once the consumer pulls
                app.state.js = nc.jetstream()
                yield                                   # the app serves HTTP meanwhile
            # leaving the block: running handlers finished, serving stopped
        finally:
            await nc.drain()

    async def pay(request: Request) -> JSONResponse:
        body = await request.json()
        ack = await OrderPaid(body["order_id"], body["amount_cents"]).publish(request.app.state.js)
        return JSONResponse({"stream": ack.stream, "seq": ack.seq}, status_code=202)

    async def stats(request: Request) -> JSONResponse:
        total = books.stats.total()
        return JSONResponse({"acked": total.acked, "orders": sorted(books.orders),
                             "total_cents": books.total_cents})

    return Starlette(routes=[HttpRoute("/orders", pay, methods=["POST"]),
                             HttpRoute("/stats", stats)], lifespan=lifespan)


async def main() -> None:
    async with contextlib.AsyncExitStack() as stack:
        url = os.environ.get("NATS_URL") or (await stack.enter_async_context(NatsServer())).url
        app = make_app(url)
        await stack.enter_async_context(app.router.lifespan_context(app))  # as uvicorn does
        client = await stack.enter_async_context(httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://app"))
        for order_id, cents in (("1001", 4990), ("1002", 1250), ("1003", 999)):
            answer = await client.post("/orders", json={"order_id": order_id,
                                                        "amount_cents": cents})
            print("POST /orders", order_id, "->", answer.status_code, answer.json())
        deadline = time.monotonic() + 10
        while (stats := (await client.get("/stats")).json())["acked"] < 3:  # as a client would
            if time.monotonic() > deadline:
                raise SystemExit(f"the service booked only {stats} within 10 s")
            await asyncio.sleep(0.02)
        print("GET /stats ->", stats)
    print("app stopped: the lifespan left Bookkeeping.running(), serving stopped")


if __name__ == "__main__":
    asyncio.run(main())
