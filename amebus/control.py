"""Pause, resume and reset a service's durable consumer on the server.

The server holds the state, so every process serving the durable stops (or moves) at once:

- :func:`pause` (nats-server 2.11+): no deliveries until a deadline (or :func:`resume`);
  pulled messages already in a process are still handled and settled;
- :func:`reset` (nats-server 2.14+): forget the delivery state and deliver again from a stream
  sequence or a time (messages before it are treated as settled, messages from it on are
  delivered again, whether they were acked before or not).

Each takes a service (class or instance; its ``stream`` and ``durable``, overridable) and
wraps nats-py 2.16's ``pause_consumer`` / ``resume_consumer`` / ``reset_consumer``.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING, Any

import attrs
from nats.js.errors import APIError

from amebus.binding import connection_of
from amebus.errors import ConfigurationError
from amebus.routing import durable_name

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

    from amebus.service import Service

__all__ = ["FOREVER", "State", "names", "pause", "reset", "resume", "seq_at"]

FOREVER = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)
"""The deadline of a pause without one: paused until resumed."""


@attrs.frozen
class State:
    """A consumer's pause state after a control call.

    Attributes:
        stream, durable: the consumer.
        paused: whether it is paused now.
        until: the pause deadline (None when not paused; :data:`FOREVER` until resumed).
        reset_seq: after :func:`reset`, the stream sequence deliveries start from again.
    """

    stream: str
    durable: str
    paused: bool
    until: dt.datetime | None = None
    reset_seq: int = 0


def names(service: type[Service] | Service, stream: str | None = None,
          durable: str | None = None) -> tuple[str, str]:
    """The (stream, durable) of ``service``, with these overrides."""
    cls = service if isinstance(service, type) else type(service)
    name = stream or cls.stream
    if not name:
        msg = f"{cls.__name__} has no stream; set it on the class or pass stream="
        raise ConfigurationError(msg)
    return name, durable_name(cls, durable)


def _rfc3339(when: dt.datetime) -> str:
    if when.tzinfo is None:
        msg = f"the time {when!r} has no timezone; give an aware datetime (UTC)"
        raise ValueError(msg)
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    when = dt.datetime.fromisoformat(head).replace(tzinfo=dt.UTC)
    return when + dt.timedelta(microseconds=int((frac + "000000")[:6])) if frac else when


async def pause(js: JetStreamContext, service: type[Service] | Service,
                until: dt.datetime | None = None, *, stream: str | None = None,
                durable: str | None = None) -> State:
    """Pause the service's durable until ``until`` (None: until :func:`resume`)."""
    stream, durable = names(service, stream, durable)
    result = await js.pause_consumer(stream, durable, _rfc3339(until or FOREVER))
    return State(stream, durable, bool(result.paused), _parse(result.pause_until))


async def resume(js: JetStreamContext, service: type[Service] | Service, *,
                 stream: str | None = None, durable: str | None = None) -> State:
    """Resume the service's durable now (deliveries start again within about 50 ms)."""
    stream, durable = names(service, stream, durable)
    # Not js.resume_consumer (a deadline in the past): nats-server 2.15.1 then leaves the
    # pull requests already waiting unserved until their next idle heartbeat (measured: 4.5 s
    # with amebus's 5 s heartbeat). A deadline just ahead fires the server's own resume
    # timer, which serves them at once (measured: 0.05 s).
    await js.pause_consumer(stream, durable, _rfc3339(
        dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=50)))
    return State(stream, durable, False)


async def seq_at(js: JetStreamContext, stream: str, when: dt.datetime) -> int:
    """The sequence of the first message ``stream`` stored at or after ``when``."""
    nc, prefix = connection_of(js)
    # nats-py 2.16's get_msg has no start_time; the server's MSG.GET has taken it since 2.11.
    request = json.dumps({"start_time": _rfc3339(when)}).encode()
    reply = await nc.request(f"{prefix}.STREAM.MSG.GET.{stream}", request, timeout=5)
    answer: dict[str, Any] = json.loads(reply.data)
    if "error" in answer:
        error = answer["error"]
        if error.get("code") == 404:
            msg = f"stream {stream!r} holds no message stored at or after {_rfc3339(when)}"
            raise LookupError(msg)
        raise APIError.from_error(error)
    return int(answer["message"]["seq"])


async def reset(js: JetStreamContext, service: type[Service] | Service, *,
                seq: int | None = None, time: dt.datetime | None = None,
                stream: str | None = None, durable: str | None = None) -> State:
    """Deliver again from stream sequence ``seq`` or from the first message at ``time``.

    Works on durables that start at ``all``, a start sequence or a start time (the server
    refuses others: 10204).
    """
    stream, durable = names(service, stream, durable)
    if (seq is None) == (time is None):
        msg = "reset needs exactly one of seq= (a stream sequence) or time= (a datetime)"
        raise ValueError(msg)
    if time is not None:
        seq = await seq_at(js, stream, time)
    assert seq is not None
    if seq < 1:
        msg = f"seq {seq!r} is not a stream sequence; give 1 or more"
        raise ValueError(msg)
    try:
        result = await js.reset_consumer(stream, durable, seq)
    except APIError as exc:
        if exc.err_code == 10204:
            msg = (f"the server refused to reset consumer {durable!r} on {stream!r} to "
                   f"sequence {seq}: {exc.description}; a durable made with deliver_policy "
                   f"'new' or 'last' cannot be reset to a sequence, and one with a start "
                   f"sequence or time not to before it")
            raise ConfigurationError(msg) from exc
        raise
    info = result.info
    return State(stream, durable, bool(info.paused), reset_seq=result.reset_seq)
