"""The runtime of idempotent and ``ack_sync`` routes (declared in :mod:`amebus.idempotency`):
a wrapper around a route's run callable, applied where the route is bound to its service.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.kv import KeyValue

from amebus.correlation import correlation_headers
from amebus.events import Event
from amebus.idempotency import Idempotent
from amebus.routing import CompiledRoute
from amebus.settlement import reply_meta

__all__ = ["route_key_prefix", "wrap"]

log = logging.getLogger(__name__)

_DONE = b"1"


def _jetstream(msg: Msg) -> JetStreamContext:
    # nats-py 2.16: a Msg knows its client only as the private _client; the route's wrapper
    # is built before serve() has a connection, so it takes the delivery's own.
    client = getattr(msg, "_client", None)
    if client is None:
        text = (f"the message on {msg.subject!r} has no client (nats-py changed Msg?); "
                f"idempotent and ack_sync routes need a JetStream delivery")
        raise RuntimeError(text)
    js: JetStreamContext = client.jetstream()
    return js


class _Store:
    def __init__(self, config: Idempotent, route: str) -> None:
        self.config = config
        self.route = route
        self.kv: KeyValue | None = None

    async def bucket(self, js: JetStreamContext) -> KeyValue:
        if self.kv is None:
            try:
                self.kv = await js.key_value(self.config.bucket)
            except nats.js.errors.BucketNotFoundError:
                self.kv = await js.create_key_value(KeyValueConfig(
                    bucket=self.config.bucket, ttl=self.config.ttl, direct=True,
                    description="amebus: messages idempotent routes have handled"))
        return self.kv

    def key(self, msg: Msg, arg: Callable[[Msg], Any]) -> str:
        if self.config.key is not None:
            raw = str(self.config.key(arg(msg)))
        else:
            stream, seq, _ = reply_meta(msg.reply)
            raw = (msg.headers or {}).get("Nats-Msg-Id") or f"{stream}:{seq}"
        digest = hashlib.sha256(f"{self.route}\0{raw}".encode()).hexdigest()[:40]
        return f"{route_key_prefix(self.route)}.{digest}"


def route_key_prefix(name: str) -> str:
    """The first key token of route ``name``'s entries (its permissions grant ``.>`` below)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name) or "route"


def _events(result: object) -> list[Event] | None:
    """The result events, as the consumer reads them (other values: none); ``None`` for a
    list mixing events and other values, which the consumer refuses."""
    if isinstance(result, Event):
        return [result]
    if isinstance(result, list | tuple):
        events = [item for item in result if isinstance(item, Event)]
        return None if events and len(events) != len(result) else events
    return []


def wrap(run: Callable[[Msg], Awaitable[Any]], route: CompiledRoute,
         arg: Callable[[Msg], Any]) -> Callable[[Msg], Awaitable[Any]]:
    """``run`` made idempotent and/or acked synchronously, as ``route`` declares; ``run``
    itself when it declares neither (nothing on the per-message path)."""
    idempotent: Idempotent | None = route.route.idempotent
    ack_sync: bool = route.route.ack_sync
    name = route.name
    if idempotent is None and not ack_sync:
        return run
    store = None if idempotent is None else _Store(idempotent, name)

    async def once(msg: Msg) -> Any:
        from amebus.publish import publish  # amebus.publish imports the event machinery

        js = _jetstream(msg)
        kv = key = None
        if store is not None:
            kv, key = await store.bucket(js), store.key(msg, arg)
            try:
                await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                pass
            else:
                log.info("%s: %r already handled (key %s): acked, not run again", name,
                         msg.subject, key)
                return await _settle(msg, ack_sync)
        result = await run(msg)
        events = _events(result)
        if events is None:
            return result  # mixed: the consumer refuses it as it would without this
        headers = correlation_headers(msg)
        for index, event in enumerate(events):
            msg_id = None if key is None else f"{key}:{index}"
            await publish(js, event, msg_id=msg_id, headers=headers)
        if kv is not None and key is not None:
            await kv.put(key, _DONE)
        return await _settle(msg, ack_sync)

    return once


async def _settle(msg: Msg, ack_sync: bool) -> None:
    if ack_sync and msg.reply:
        await msg.ack_sync()  # the server confirms; a lost ack raises here
