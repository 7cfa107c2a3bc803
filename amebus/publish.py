"""Publishing events to JetStream: ``Event.publish`` (through :func:`publish`) and
``publish_many``, with the checks the server would otherwise answer by refusing the event or
closing the connection, and the server's per-message TTL, expected sequences, schedules and
atomic batches.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus.atomic import send_atomic
from amebus.errors import BatchPublishError, NoStreamError, PublishError, SubjectError
from amebus.events import Event
from amebus.schedules import scheduled
from amebus.telemetry import publishing
from amebus.wire import (
    MAX_CONTROL_LINE,
    MAX_SUBJECT,
    check_size,
    connection,
    expectations,
    no_stream,
    read_ack,
    refused,
    ttl_header,
)

__all__ = ["DEFAULT_TIMEOUT", "MAX_CONTROL_LINE", "MAX_SUBJECT", "publish", "publish_many",
           "send"]

DEFAULT_TIMEOUT = 5.0
"""Seconds ``publish_many`` waits for acks when no timeout is given (nats-py's default)."""

_WINDOW = 4096  # publish_many: most acks outstanding at once (nats-py's publish_async: 4000)
_Item = tuple[str, bytes, dict[str, str]]


async def publish(js: JetStreamContext, event: Event, *, msg_id: str | None = None,
                  headers: Mapping[str, str] | None = None, timeout: float | None = None,
                  ttl: float | timedelta | None = None,
                  expected_last_subject_sequence: int | None = None,
                  expected_last_sequence: int | None = None, expected_stream: str | None = None,
                  at: datetime | None = None, delay: float | timedelta | None = None,
                  every: float | timedelta | None = None, cron: str | None = None,
                  time_zone: str | None = None, schedule_subject: str | None = None) -> PubAck:
    """Publish ``event`` (``Event.publish`` calls this) and return the server's ack.

    ``msg_id``, ``headers`` and ``timeout``: see ``Event.publish``.

    Args:
        ttl: seconds (or a timedelta, at least 1 s) the server keeps the message: sets
            ``Nats-TTL``; the stream needs ``allow_msg_ttl``. On a schedule it is the TTL of
            each message the schedule produces (``Nats-Schedule-TTL``).
        expected_last_subject_sequence: store only if the last message on the event's
            subject has this stream sequence (0: none yet); else ``SequenceConflictError``
            carrying the actual one. ``expected_last_sequence``: the same for the whole
            stream; ``expected_stream``: store only into the stream of this name.
        at: an aware datetime: the server publishes the event then (an ``@at`` schedule);
            ``delay``: seconds or a timedelta from now. ``every``: an interval (>= 1 s) and
            ``cron``: six cron fields with an optional IANA ``time_zone`` (server >= 2.14)
            for a recurring event. A schedule needs ``allow_msg_schedules`` on the stream and
            a schedule subject in it: ``schedule_subject``, by default
            ``amebus.schedule.<subject>.<id>`` (see :mod:`amebus.schedules`). The ack is the
            schedule's own.
    """
    out = event.encode(msg_id=msg_id, headers=headers)
    hdrs = out.headers
    if ttl is not None and at is None and delay is None and every is None and cron is None:
        hdrs[Header.MSG_TTL] = ttl_header(ttl)
    hdrs.update(expectations(last_subject_sequence=expected_last_subject_sequence,
                             last_sequence=expected_last_sequence, stream=expected_stream))
    schedule = scheduled(out.subject, at=at, delay=delay, every=every, cron=cron,
                         time_zone=time_zone, ttl=ttl, schedule_subject=schedule_subject)
    if schedule is None:
        return await send(js, out.subject, out.payload, hdrs, timeout)
    hdrs.update(schedule[1])
    try:
        return await send(js, schedule[0], out.payload, hdrs, timeout)
    except NoStreamError:
        where = ".".join(schedule[0].split(".")[:3])
        msg = (f"no stream captures the schedule subject {schedule[0]!r}, so nothing was "
               f"scheduled; the schedule must be in the stream holding {out.subject!r}: add "
               f"{where + '.>'!r} to that stream's subjects (or give schedule_subject=)")
        raise NoStreamError(msg, subject=schedule[0]) from None


async def send(js: JetStreamContext, subject: str, payload: bytes,
               hdrs: dict[str, str], timeout: float | None = None) -> PubAck:
    """Publish one encoded message (an ``Event.encode()`` result), telemetry included."""
    observer = publishing.current
    if observer is None:
        return await _send_one(js, subject, payload, hdrs, timeout)
    done = observer.publish_started((subject,), (hdrs,))  # may add trace headers
    try:
        ack = await _send_one(js, subject, payload, hdrs, timeout)
    except BaseException as exc:
        done(exc)
        raise
    done(None)
    return ack


async def _send_one(js: JetStreamContext, subject: str, payload: bytes,
                    hdrs: dict[str, str], timeout: float | None) -> PubAck:
    check_size(connection(js), subject, payload, hdrs)
    try:
        return await js.publish(subject, payload, timeout=timeout, headers=hdrs)
    except nats.js.errors.NoStreamResponseError:
        raise no_stream(subject) from None
    except nats.errors.TimeoutError:
        wait = "the JetStream context's timeout" if timeout is None else f"{timeout}s"
        msg = (f"no ack for {subject!r} within {wait}; the server may or may not have stored "
               f"it: publish again with the same msg_id to stay idempotent")
        raise PublishError(msg, subject=subject) from None
    except nats.js.errors.APIError as err:
        raise refused(subject, err.description, err.code, err.err_code, err.stream) from None
    except (nats.errors.Error, ValueError) as err:
        msg = f"publishing to {subject!r} failed: {err!r}"
        raise PublishError(msg, subject=subject) from err


class _Batch:
    """Acks of one publish_many call, arriving on the call's own reply inbox."""

    def __init__(self, subjects: list[str], inbox: str) -> None:
        self.subjects = subjects
        self.results: list[PubAck | PublishError | None] = [None] * len(subjects)
        self.cut = len(inbox) + 1
        self.sent = 0
        self.answered = 0
        self.limit = 0
        self.room = asyncio.Event()

    async def on_reply(self, msg: Msg) -> None:
        index = int(msg.subject[self.cut:])
        if self.results[index] is None:
            self.results[index] = read_ack(msg, self.subjects[index])
            self.answered += 1
            if self.sent - self.answered <= self.limit:
                self.room.set()

    async def until(self, limit: int, timeout: float) -> None:
        """Wait until at most ``limit`` acks are outstanding."""
        if self.sent - self.answered > limit:
            self.limit = limit
            self.room.clear()
            async with asyncio.timeout(timeout):
                await self.room.wait()


async def publish_many(js: JetStreamContext, events: Iterable[Event], *,
                       timeout: float | None = None, atomic: bool = False,
                       ttl: float | timedelta | None = None,
                       headers: Mapping[str, str] | None = None) -> list[PubAck]:
    """Publish ``events`` pipelined (up to 4096 acks outstanding) and return acks in order.

    Every subject is computed and every payload encoded before the first event is sent.
    Without ``atomic`` the batch is not atomic: on failure the events the server stored stay
    stored.

    Args:
        js: the JetStream context to publish through.
        events: the events, published in this order.
        timeout: seconds to wait whenever acks are awaited (default ``DEFAULT_TIMEOUT``).
        atomic: store all or none, through the server's atomic batch publish (nats-server
            >= 2.12, at most 1,000 events, all into one stream with ``allow_atomic``).
        ttl: the per-message TTL of every event (see :func:`publish`).
        headers: extra headers for every event (a handler's results get the correlation
            headers of their input here).

    Raises:
        SubjectError: an event's subject is invalid; nothing was published.
        PublishError: an event is over the server's max_payload; nothing was published.
        StreamSettingError: ``atomic`` (or ``ttl``) on a stream that does not allow it.
        BatchPublishError: some events were not stored; ``acks`` holds one ack or ``None``
            per event, ``failures`` maps the index of each failed event to its error. With
            ``atomic`` none was stored.
    """
    items: list[_Item] = []
    for index, event in enumerate(events):
        try:
            out = event.encode(headers=headers)
        except SubjectError as err:
            msg = f"events[{index}]: {err}; nothing was published"
            raise SubjectError(msg) from None
        if ttl is not None:
            out.headers[Header.MSG_TTL] = ttl_header(ttl)
        items.append((out.subject, out.payload, out.headers))
    sender = send_atomic if atomic else _send_many
    observer = publishing.current
    if observer is None:
        return await sender(js, items, timeout)
    done = observer.publish_started([s for s, _, _ in items], [h for _, _, h in items])
    try:
        acks = await sender(js, items, timeout)
    except BaseException as exc:
        done(exc)
        raise
    done(None)
    return acks


async def _send_many(js: JetStreamContext, items: list[_Item],
                     timeout: float | None) -> list[PubAck]:
    nc = connection(js)
    for index, item in enumerate(items):
        try:
            check_size(nc, *item)
        except SubjectError as err:  # over the control line: the server would close it too
            msg = f"events[{index}]: {err}; nothing was published"
            raise SubjectError(msg) from None
        except PublishError as err:  # too large: the server would close the connection
            msg = f"events[{index}]: {err}; nothing of the batch was published"
            raise PublishError(msg, subject=err.subject) from None
    wait = DEFAULT_TIMEOUT if timeout is None else timeout
    if len(items) <= 1:  # a handler's single result: skip the batch's own reply subscription
        try:
            return [await _send_one(js, *items[0], wait)] if items else []
        except PublishError as err:
            raise _batch_error([None], {0: err}) from None
    inbox = nc.new_inbox()
    batch = _Batch([subject for subject, _, _ in items], inbox)
    try:
        sub = await nc.subscribe(f"{inbox}.*", cb=batch.on_reply)
    except nats.errors.Error as err:
        return _acks_or_raise(batch, f"the connection failed ({err!r})")
    reason = ""
    try:
        for index, (subject, payload, hdrs) in enumerate(items):
            if batch.sent - batch.answered >= _WINDOW:
                await batch.until(_WINDOW // 2, wait)
            await nc.publish(subject, payload, reply=f"{inbox}.{index}", headers=hdrs)
            batch.sent += 1
        await batch.until(0, wait)
    except TimeoutError:
        reason = f"no ack within {wait}s; the server may or may not have stored it"
    except nats.errors.Error as err:
        reason = f"the connection failed ({err!r})"
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return _acks_or_raise(batch, reason)


def _acks_or_raise(batch: _Batch, reason: str) -> list[PubAck]:
    acks: list[PubAck | None] = []
    failures: dict[int, PublishError] = {}
    for index, result in enumerate(batch.results):
        if isinstance(result, PubAck):
            acks.append(result)
            continue
        acks.append(None)
        subject = batch.subjects[index]
        if result is None:
            why = reason if index < batch.sent else f"not sent, after: {reason}"
            result = PublishError(f"{subject!r}: {why}", subject=subject)
        failures[index] = result
    if not failures:
        return acks  # type: ignore[return-value]  # no None left
    raise _batch_error(acks, failures)


def _batch_error(acks: list[PubAck | None], failures: dict[int, PublishError]
                 ) -> BatchPublishError:
    listed = "; ".join(f"events[{index}] {error}" for index, error in list(failures.items())[:5])
    more = f"; and {len(failures) - 5} more" if len(failures) > 5 else ""
    msg = (f"{len(failures)} of {len(acks)} events were not stored: {listed}{more}. The others "
           f"were stored (their acks are on .acks); republish only .failures, with msg ids if "
           f"a retry must not duplicate")
    return BatchPublishError(msg, acks=acks, failures=failures)
