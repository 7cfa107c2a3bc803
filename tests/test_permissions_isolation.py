"""Two services with their own generated users on one account: service B's user may not pull
from, ack on or read the info of service A's durable, nor receive A's replies."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import nats
from nats.aio.msg import Msg

from amebus import Route, Service
from amebus.permissions import inbox_prefix, permissions
from amebus.testing import NatsServer
from tests._support import eventually
from tests.test_permissions import Jobs


async def _ignore(msg: Msg) -> None:
    return None


class Billing(Service):
    stream = "JOBS"
    stream_subjects = ("job.>",)
    max_deliver = 0
    work = Route("job.ok", _ignore)


async def test_one_service_cannot_touch_anothers_durable_or_replies() -> None:
    users = [{"user": "admin", "password": "admin-pw"},
             {"user": "a", "password": "a-pw", "permissions": permissions(Jobs).as_dict()},
             {"user": "b", "password": "b-pw", "permissions": permissions(Billing).as_dict()}]
    server = NatsServer(config="authorization " + json.dumps({"users": users}) + "\n")
    await server.start()
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    admin = await nats.connect(server.url, user="admin", password="admin-pw")
    a = await nats.connect(server.url, user="a", password="a-pw",
                           inbox_prefix=inbox_prefix(Jobs))
    b = await nats.connect(server.url, user="b", password="b-pw", error_cb=on_error,
                           inbox_prefix=inbox_prefix(Billing))
    seen: list[Msg] = []
    tasks: list[asyncio.Task[Any]] = []
    try:
        await admin.jetstream().add_stream(name="DEAD_JOBS", subjects=["dead.jobs"])
        await admin.jetstream().add_stream(name="RESULTS", subjects=["result.>"])
        for service, nc in ((Jobs(), a), (Billing(), b)):
            ready = asyncio.Event()
            tasks.append(asyncio.create_task(service.serve(nc, ready=ready)))
            await asyncio.wait_for(ready.wait(), 10)
        # B's own rights work (the control): its durable's info answers
        assert (await b.jetstream().consumer_info("JOBS", "Billing")).name == "Billing"
        await admin.jetstream().publish("job.ok", json.dumps({"id": "x1"}).encode())
        denied = {
            "publish": ["$JS.API.CONSUMER.MSG.NEXT.JOBS.Jobs", "$JS.ACK.JOBS.Jobs.1.1.1.1.0",
                        "$JS.API.CONSUMER.INFO.JOBS.Jobs"],
            "subscription": ["_INBOX_Jobs.>", "_INBOX.>"],
        }
        for subject in denied["publish"]:
            await b.publish(subject, b"", reply=b.new_inbox())
        async def spy(msg: Msg) -> None:
            seen.append(msg)

        for subject in denied["subscription"]:
            await b.subscribe(subject, cb=spy)
        # A keeps using its inbox (info requests) while B listens
        for _ in range(3):
            await a.jetstream().consumer_info("JOBS", "Jobs")
        for kind, subjects in denied.items():
            for subject in subjects:
                await eventually(lambda s=subject, k=kind: any(
                    f'permissions violation for {k} to "{s.lower()}"' in e.lower()
                    for e in errors), 5, what=f"{kind} to {subject} refused")
        assert seen == []
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        for nc in (a, b, admin):
            with contextlib.suppress(Exception):
                await nc.close()
        await server.stop()
