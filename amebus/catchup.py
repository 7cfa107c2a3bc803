"""Adding a route: the messages already stored on its subjects are replayed (or, by choice,
skipped), and how many is logged either way.

The durable's position is shared by all its subjects: once a redeploy widens what a service
handles, the server delivers new messages of the added subjects, but those stored *before*
the durable's delivered sequence were never delivered (a filtered consumer) or were acked
unhandled (an unfiltered one). amebus records the route patterns it consumed in the
durable's metadata (``amebus_routes``); when they widen, a catch-up durable
(``<durable>_catchup``) filtered on the added patterns replays the stored messages up to
that sequence through the same handlers and settlement, then is deleted. Its metadata holds
the sequence, so a crash during the replay resumes it on the next start.
``new_routes = "skip"`` skips them instead (counted and logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING

from nats.js import api
from nats.js.errors import NotFoundError

from amebus.subjects import covers, validate_pattern

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.consumer import JetStreamConsumer

__all__ = ["ROUTES_KEY", "added_routes", "catch_up", "catch_up_durable", "recorded_routes",
           "routes_metadata"]

log = logging.getLogger(__name__)

ROUTES_KEY = "amebus_routes"
_UPTO_KEY = "amebus_upto"


def added_routes(before: list[str], now: list[str]) -> list[str]:
    """The patterns of ``now`` that no pattern of ``before`` covers."""
    old = [validate_pattern(p) for p in before]
    return [p for p in now if not any(covers(o, validate_pattern(p)) for o in old)]


async def _count(js: JetStreamContext, stream: str, subjects: list[str], upto: int) -> int:
    """Messages stored on ``subjects`` at sequences up to ``upto`` (two ephemeral counts)."""
    total = 0
    for start, sign in ((1, 1), (upto + 1, -1)):
        config = api.ConsumerConfig(ack_policy=api.AckPolicy.NONE, filter_subjects=subjects,
                                    deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=start, inactive_threshold=5.0)
        info = await js.add_consumer(stream, config)
        total += sign * (info.num_pending or 0)
        await js.delete_consumer(stream, info.name)
    return total


def catch_up_durable(durable: str) -> str:
    """The name of the durable that replays ``durable``'s added routes."""
    return f"{durable}_catchup"


async def catch_up(consumer: JetStreamConsumer, stream: str, durable: str,
                   added: list[str], upto: int, mode: str) -> int:
    """Replay (``mode`` ``"replay"``) or count and skip the stored messages of ``added`` up
    to stream sequence ``upto``; resume a replay left by a crash. Returns how many."""
    js = consumer.js
    name = catch_up_durable(durable)
    try:
        info = await js.consumer_info(stream, name)
    except NotFoundError:
        info = None
    if info is not None:  # a replay interrupted by a crash: resume it
        upto = int((info.config.metadata or {}).get(_UPTO_KEY, "0"))
        added = list(info.config.filter_subjects or [info.config.filter_subject or ">"])
    elif not added or upto <= 0:
        return 0
    elif mode == "skip":
        skipped = await _count(js, stream, added, upto)
        log.warning("%s: added route(s) %s; %d stored message(s) up to stream seq %d were "
                    "skipped (new_routes='skip')", durable, added, skipped, upto)
        return skipped
    else:
        config = api.ConsumerConfig(
            durable_name=name, ack_policy=api.AckPolicy.EXPLICIT, filter_subjects=added,
            deliver_policy=api.DeliverPolicy.ALL, ack_wait=consumer.settings.ack_wait,
            max_deliver=consumer.limits.server_max_deliver, metadata={_UPTO_KEY: str(upto)})
        info = await js.add_consumer(stream, config)
        log.warning("%s: added route(s) %s; replaying the stored messages up to stream seq "
                    "%d", durable, added, upto)
    try:
        replayed = await _replay(consumer, stream, name, upto)
    except Exception:  # the catch-up durable stays: the next start resumes the replay
        log.exception("%s: replaying the added route(s) %s failed; it resumes at the next "
                      "start", durable, added)
        return 0
    with contextlib.suppress(NotFoundError):  # another instance replaying too deleted it
        await js.delete_consumer(stream, name)
    log.warning("%s: replayed %d stored message(s) of the added route(s) %s", durable,
                replayed, added)
    return replayed


async def _replay(consumer: JetStreamConsumer, stream: str, name: str, upto: int) -> int:
    js = consumer.js
    sub = await js.pull_subscribe_bind(name, stream)
    replayed, past, idle = 0, False, False
    try:
        while True:
            if past or idle:  # everything up to ``upto`` delivered, or nothing left
                info = await js.consumer_info(stream, name)
                if info.num_ack_pending == 0 and (past or info.num_pending == 0):
                    return replayed
            try:
                msgs = await sub.fetch(max(1, consumer.settings.concurrency), timeout=1.0)
            except TimeoutError:  # nats-py: nothing to deliver now
                idle = True
                continue
            idle = False
            mine = [m for m in msgs if m.metadata.sequence.stream <= upto]
            for msg in msgs:
                if msg.metadata.sequence.stream > upto:  # the main durable delivers these
                    past = True
                    await msg.ack()
            results = await asyncio.gather(*(consumer.handle(m) for m in mine))
            replayed += sum(1 for d in results if d.action != "nak")
    finally:
        await sub.unsubscribe()


def routes_metadata(patterns: list[str]) -> dict[str, str]:
    """The metadata entry recording the routes a durable consumes."""
    return {ROUTES_KEY: json.dumps(sorted(patterns))}


def recorded_routes(config: api.ConsumerConfig) -> list[str] | None:
    """The routes a durable consumed as amebus recorded them, else its filters; None when it
    took the whole stream without a record (nothing to compare with)."""
    recorded = (config.metadata or {}).get(ROUTES_KEY)
    if recorded is not None:
        try:
            return [str(p) for p in json.loads(recorded)]
        except ValueError:
            return None
    filters = list(config.filter_subjects or []) or (
        [config.filter_subject] if config.filter_subject else [])
    return filters or None
