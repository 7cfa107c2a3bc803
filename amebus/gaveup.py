"""The backstop for messages the server gave up on: a dead-letter copy of each one.

When the server reaches a durable's ``max_deliver`` it stops delivering the message and says
so only in a ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<durable>`` advisory.
With a dead-letter subject set, amebus captures those advisories in a stream of its own
(``amebus_gaveup_<stream>_<durable>``, a work queue created at bind) and every serving
instance consumes it through one shared durable: the given-up message is fetched by its
stream sequence and published to the dead-letter subject with ``Amebus-Stage: gave-up``, then
the advisory is acked. A copy that cannot be published is retried (the advisory is nak'ed
with a delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING

from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from amebus.deadletter import publish_dead_letter
from amebus.tracing import Decision, Failure

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.consumer import JetStreamConsumer

__all__ = ["DURABLE", "GaveUpError", "advisory_stream", "ensure_gave_up_stream", "watch_gave_up"]

log = logging.getLogger(__name__)

DURABLE = "amebus"
"""The durable that reads the MAX_DELIVERIES advisories (the permissions grant names it)."""
_RETRY = 5.0


class GaveUpError(RuntimeError):
    """The server stopped delivering a message: its max_deliver was reached."""


def advisory_stream(stream: str, durable: str) -> str:
    """The name of the stream that captures the durable's MAX_DELIVERIES advisories."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", f"amebus_gaveup_{stream}_{durable}")
    return name[:255]


async def ensure_gave_up_stream(js: JetStreamContext, stream: str, durable: str) -> str:
    """Create (or keep) the advisory stream and its durable; return the stream name."""
    name = advisory_stream(stream, durable)
    subject = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{durable}"
    try:
        await js.stream_info(name)
    except NotFoundError:
        await js.add_stream(api.StreamConfig(name=name, subjects=[subject],
                                             storage=api.StorageType.FILE,
                                             retention=api.RetentionPolicy.WORK_QUEUE))
        log.info("created stream %s over %s", name, subject)
    await js.add_consumer(name, api.ConsumerConfig(
        durable_name=DURABLE, ack_policy=api.AckPolicy.EXPLICIT, ack_wait=30.0))
    return name


async def watch_gave_up(consumer: JetStreamConsumer, stream: str, durable: str) -> None:
    """Copy each message the server gave up on to the dead-letter subject, until cancelled."""
    js = consumer.js
    name = advisory_stream(stream, durable)
    sub = await js.pull_subscribe_bind(DURABLE, name)
    try:
        while True:
            try:
                advisories = await sub.fetch(10, timeout=5.0)
            except TimeoutError:  # nats-py: idle, nothing given up
                continue
            except Exception as exc:  # disconnected: try again shortly
                log.debug("gave-up fetch failed: %r", exc)
                await asyncio.sleep(1.0)
                continue
            for advisory in advisories:
                await _copy(consumer, stream, durable, advisory)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def _copy(consumer: JetStreamConsumer, stream: str, durable: str, advisory: Msg) -> None:
    subject = consumer.settings.dead_letter_subject
    try:
        event = json.loads(advisory.data)
        seq, deliveries = int(event["stream_seq"]), int(event["deliveries"])
    except (ValueError, KeyError, TypeError):
        log.warning("unreadable MAX_DELIVERIES advisory %r; dropped", advisory.data[:200])
        await advisory.ack()
        return
    error = GaveUpError(f"the server gave up on it after {deliveries} deliveries "
                        f"(consumer {durable!r}, max_deliver reached)")
    try:
        raw = await consumer.js.get_msg(stream, seq)
        msg = Msg(_client=consumer.nc, subject=raw.subject or "", data=raw.data or b"",
                  headers=raw.headers)
    except NotFoundError:
        error = GaveUpError(f"{error}; it is no longer in stream {stream!r}, so the copy has "
                            f"no payload")
        msg = Msg(_client=consumer.nc, subject="", data=b"", headers=None)
    except Exception as exc:
        log.warning("could not fetch given-up message %s/%d: %r; retrying", stream, seq, exc)
        await advisory.nak(delay=_RETRY)
        return
    decision = Decision.term("gave up", dead_letter=True)
    failure = Failure(stage="gave-up", error=error, subject=msg.subject, stream=stream,
                      stream_seq=seq, deliveries=deliveries, route=None, retryable=False,
                      decision=decision)
    with contextlib.suppress(Exception):
        consumer.tracer.trace(failure)
    if subject is None:
        await advisory.ack()
        return
    instead = await publish_dead_letter(
        consumer.js, subject, msg, failure, decision, settings=consumer.settings,
        tracer=consumer.tracer, max_payload=getattr(consumer.nc, "max_payload", None),
        on_copy_failed=lambda exc: Decision.nak(_RETRY))
    if instead is not None and instead.action == "nak":
        await advisory.nak(delay=_RETRY)
        return
    log.error("the server gave up on %s/%d after %d deliveries; %s", stream, seq, deliveries,
              "dead-lettered to " + subject if instead is None else "too large to dead-letter")
    await advisory.ack()
