"""Atomic batches: ``publish_many(..., atomic=True)`` through the server's atomic batch
publish (ADR-50, nats-server >= 2.12): every event is stored, or none is.

Each message carries ``Nats-Batch-Id`` and ``Nats-Batch-Sequence`` (1, 2, ...); the last one
``Nats-Batch-Commit: 1``. The server holds the batch until the commit and answers it with one
ack (the last sequence and ``count``) or one error. The first message is sent as a request so
a stream without ``allow_atomic`` is refused at once; the ones in between go without a reply
(the server checks for gaps at the commit). nats-py 2.16 has the headers but no batch API.
"""

from __future__ import annotations

import uuid

import nats.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus.errors import BatchPublishError, PublishError
from amebus.wire import check_size, connection, no_stream, read_ack

__all__ = ["MAX_ATOMIC", "send_atomic"]

MAX_ATOMIC = 1000
"""The most messages the server takes in one atomic batch."""

_DEFAULT_TIMEOUT = 5.0


async def send_atomic(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]],
                      timeout: float | None) -> list[PubAck]:
    """Publish ``items`` (subject, payload, headers) as one atomic batch; all acks, in order."""
    if not items:
        return []
    if len(items) > MAX_ATOMIC:
        msg = (f"an atomic batch holds at most {MAX_ATOMIC} events, got {len(items)}; nothing "
               f"was published: split it, or publish without atomic=True")
        raise ValueError(msg)
    nc = connection(js)
    for index, (subject, payload, hdrs) in enumerate(items):
        try:
            check_size(nc, subject, payload, hdrs)
        except PublishError as err:
            msg = f"events[{index}]: {err}; nothing of the atomic batch was published"
            raise type(err)(msg, subject=subject) from None
    wait = _DEFAULT_TIMEOUT if timeout is None else timeout
    batch = uuid.uuid4().hex
    last = len(items) - 1
    for index, (subject, payload, hdrs) in enumerate(items):
        headers = {**hdrs, Header.BATCH_ID: batch, Header.BATCH_SEQUENCE: str(index + 1)}
        if index == last:
            headers[Header.BATCH_COMMIT] = "1"
        if index not in (0, last):
            await nc.publish(subject, payload, headers=headers)
            continue
        reply = await _request(nc, subject, payload, headers, wait, len(items))
        if index == last or reply.data:  # the commit's ack, or the start refused
            result = read_ack(reply, subject)
            if isinstance(result, PublishError):
                raise _none_stored(len(items), index, result)
            return _acks(result, len(items))
    msg = "unreachable: the commit returns"  # pragma: no cover
    raise AssertionError(msg)


async def _request(nc: NATS, subject: str, payload: bytes, headers: dict[str, str],
                   wait: float, size: int) -> Msg:
    try:
        reply: Msg = await nc.request(subject, payload, timeout=wait, headers=headers)
        return reply
    except nats.errors.NoRespondersError:
        raise _none_stored(size, 0, no_stream(subject)) from None
    except nats.errors.TimeoutError:
        err = PublishError(f"no reply on {subject!r} within {wait}s; the batch is abandoned by "
                           f"the server after 10 s without a commit", subject=subject)
        raise _none_stored(size, 0, err) from None
    except nats.errors.Error as err:
        error = PublishError(f"publishing to {subject!r} failed: {err!r}", subject=subject)
        raise _none_stored(size, 0, error) from err


def _acks(ack: PubAck, size: int) -> list[PubAck]:
    """The server acks the commit with the last sequence; the batch holds the ones before."""
    first = ack.seq - size + 1
    return [PubAck(stream=ack.stream, seq=first + index, domain=ack.domain,
                   batch_id=ack.batch_id, batch_size=ack.batch_size) for index in range(size)]


def _none_stored(size: int, index: int, error: PublishError) -> BatchPublishError:
    msg = (f"the atomic batch of {size} events was not stored, none of it (refused at "
           f"events[{index}]): {error}")
    failures = dict.fromkeys(range(size), error)
    return BatchPublishError(msg, acks=[None] * size, failures=failures)
