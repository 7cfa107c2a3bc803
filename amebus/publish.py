"""Publishing events to JetStream: ``Event.publish`` and ``publish_many``, with the checks the
server would otherwise answer by refusing the event or closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Iterable, Mapping

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, PubAck

from amebus.codec import default_codec
from amebus.errors import BatchPublishError, NoStreamError, PublishError, SubjectError
from amebus.events import EVENT_TYPE_HEADER, Event, _spec_of, subject_of
from amebus.telemetry import publishing

__all__ = ["DEFAULT_TIMEOUT", "MAX_CONTROL_LINE", "MAX_SUBJECT", "publish_many"]

DEFAULT_TIMEOUT = 5.0
"""Seconds ``publish_many`` waits for acks when no timeout is given (nats-py's default)."""

MAX_CONTROL_LINE = 4096
"""Bytes of a publish's control line (``HPUB <subject> <reply> <sizes>``) nats-server accepts
by default (``max_control_line``); measured on 2.15.1: a longer line is answered with
``-ERR 'Maximum Control Line Exceeded'`` and the connection is closed (the server checks it
only when the line spans reads, so some longer lines pass: never rely on it)."""

MAX_SUBJECT = 3_968
"""The longest subject amebus publishes: ``MAX_CONTROL_LINE`` less room for nats-py's reply
inbox and the sizes (a default inbox prefix; a longer ``inbox_prefix`` leaves less)."""

_WINDOW = 4096  # publish_many: most acks outstanding at once (nats-py's publish_async: 4000)
_NO_RESPONDERS = "503"


def _prepare(event: Event, msg_id: str | None,
             headers: Mapping[str, str] | None) -> tuple[str, bytes, dict[str, str]]:
    """Subject, payload and headers of ``event``; raises before anything is sent."""
    spec = _spec_of(type(event))
    subject = spec.static if spec.static is not None else subject_of(event)
    hdrs = {EVENT_TYPE_HEADER: spec.event_type}
    if headers:
        hdrs = {**headers, **hdrs}
        if headers.get(EVENT_TYPE_HEADER, spec.event_type) != spec.event_type:
            msg = (f"headers[{EVENT_TYPE_HEADER!r}] is {headers[EVENT_TYPE_HEADER]!r}, but "
                   f"{spec.name} is {spec.event_type!r}; amebus sets this header, drop it")
            raise ValueError(msg)
    if msg_id is not None:
        if hdrs.get(Header.MSG_ID, msg_id) != msg_id:
            msg = (f"msg_id {msg_id!r} conflicts with headers[{Header.MSG_ID.value!r}] "
                   f"{hdrs[Header.MSG_ID]!r}; give one of them")
            raise ValueError(msg)
        hdrs[Header.MSG_ID] = msg_id
    return subject, default_codec.encode(event), hdrs


async def _publish_one(js: JetStreamContext, subject: str, payload: bytes,
                       hdrs: dict[str, str], timeout: float | None) -> PubAck:
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
    _check_size(_connection(js), subject, payload, hdrs)
    try:
        return await js.publish(subject, payload, timeout=timeout, headers=hdrs)
    except nats.js.errors.NoStreamResponseError:
        raise _no_stream(subject) from None
    except nats.errors.TimeoutError:
        wait = "the JetStream context's timeout" if timeout is None else f"{timeout}s"
        msg = (f"no ack for {subject!r} within {wait}; the server may or may not have stored "
               f"it: publish again with the same msg_id to stay idempotent")
        raise PublishError(msg, subject=subject) from None
    except nats.js.errors.APIError as err:
        raise _refused(subject, err.description, err.code, err.err_code) from None
    except (nats.errors.Error, ValueError) as err:
        msg = f"publishing to {subject!r} failed: {err!r}"
        raise PublishError(msg, subject=subject) from err


def _check_size(nc: NATS, subject: str, payload: bytes, hdrs: Mapping[str, str]) -> None:
    """Refuse what the server would refuse: it counts headers too, and answers an oversized
    message, or a control line over its limit, with -ERR, on which nats-py closes the
    connection for good."""
    limit = nc.max_payload
    header = 12 + sum(len(k.strip().encode()) + len(v.strip().encode()) + 4
                      for k, v in hdrs.items())
    size = len(payload) + header
    if size > limit:
        msg = (f"the event for {subject!r} is {size} bytes with its headers ({len(payload)} "
               f"of payload), over the server's max_payload of {limit} bytes; nothing was "
               f"sent: make the event smaller or raise max_payload in the server config")
        raise PublishError(msg, subject=subject)
    # The reply subject nats-py uses: its request inbox (new_inbox() and a 22-character
    # token, nats-py 2.16) for Event.publish, the batch's inbox and an index for publish_many.
    reply = len(nc.new_inbox()) + 23
    line = len(b"HPUB   ") + len(subject.encode()) + reply + len(str(header)) + len(str(size))
    if line > MAX_CONTROL_LINE:
        msg = (f"the subject {_cut(subject)} is {len(subject.encode())} bytes: with the reply "
               f"subject and the sizes its publish line would be {line} bytes, over the "
               f"server's control-line limit of {MAX_CONTROL_LINE} (its default "
               f"max_control_line; it closes the connection on a longer one); nothing was "
               f"sent: keep subjects under {MAX_SUBJECT} bytes (hash or shorten long tokens)")
        raise SubjectError(msg)


def _cut(subject: str) -> str:
    if len(subject) <= 80:
        return repr(subject)
    return f"{subject[:60]!r}..."


def _no_stream(subject: str) -> NoStreamError:
    msg = (f"no JetStream stream captures the subject {subject!r}, so the event was not stored; "
           f"create a stream whose subjects include it, e.g. {subject.split('.')[0] + '.>'!r}")
    return NoStreamError(msg, subject=subject)


def _refused(subject: str, description: object, code: object, err_code: object) -> PublishError:
    msg = (f"the server did not store the event on {subject!r}: {description} "
           f"(code {code}, err_code {err_code})")
    return PublishError(msg, subject=subject)


def _read_ack(msg: Msg, subject: str) -> PubAck | PublishError:
    if msg.headers and msg.headers.get(Header.STATUS) == _NO_RESPONDERS:
        return _no_stream(subject)
    try:
        reply = json.loads(msg.data)
        if "error" in reply:
            error = reply["error"]
            return _refused(subject, error.get("description"), error.get("code"),
                            error.get("err_code"))
        return PubAck.from_response(reply)
    except (ValueError, TypeError, AttributeError):
        text = (f"the reply on {subject!r} is not a JetStream ack: {msg.data[:200]!r}; is a "
                f"core subscriber answering on this subject?")
        return PublishError(text, subject=subject)


def _connection(js: JetStreamContext) -> NATS:
    # nats-py has no public accessor for the connection. Its public publish_async() never
    # resolves the future of a publish the server refuses (2.16: APIError.from_error raises
    # inside the reply callback) and leaks its pending slot, so publish_many pipelines itself.
    return js._nc


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
            self.results[index] = _read_ack(msg, self.subjects[index])
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
                       timeout: float | None = None) -> list[PubAck]:
    """Publish ``events`` pipelined (up to 4096 acks outstanding) and return acks in order.

    Every subject is computed and every payload encoded before the first event is sent.
    The batch is not atomic: on failure the events the server stored stay stored.

    Args:
        js: the JetStream context to publish through.
        events: the events, published in this order.
        timeout: seconds to wait whenever acks are awaited (default ``DEFAULT_TIMEOUT``).

    Raises:
        SubjectError: an event's subject is invalid; nothing was published.
        PublishError: an event is over the server's max_payload; nothing was published.
        BatchPublishError: some events were not stored; ``acks`` holds one ack or ``None``
            per event, ``failures`` maps the index of each failed event to its error.
    """
    items = []
    for index, event in enumerate(events):
        try:
            items.append(_prepare(event, None, None))
        except SubjectError as err:
            msg = f"events[{index}]: {err}; nothing was published"
            raise SubjectError(msg) from None
    observer = publishing.current
    if observer is None:
        return await _send_many(js, items, timeout)
    done = observer.publish_started([s for s, _, _ in items], [h for _, _, h in items])
    try:
        acks = await _send_many(js, items, timeout)
    except BaseException as exc:
        done(exc)
        raise
    done(None)
    return acks


async def _send_many(js: JetStreamContext, items: list[tuple[str, bytes, dict[str, str]]],
                     timeout: float | None) -> list[PubAck]:
    nc = _connection(js)
    for index, item in enumerate(items):
        try:
            _check_size(nc, *item)
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
