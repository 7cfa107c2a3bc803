"""Order per key: messages with the same key run one at a time in stream order, different keys
run concurrently; a message whose key is busy is parked (``JetStreamConsumer.park``).

:func:`check_keys` checks a service's keys when its class is created (a subject token
position, an event attribute or a function of what the handler receives); :class:`KeyOrder`
runs them in the consumer's workers. The rules, redeliveries included: ``docs/ordering.md``.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from amebus.errors import ConfigurationError, DecodeError
from amebus.settlement import reply_meta

if TYPE_CHECKING:
    from nats.aio.msg import Msg

    from amebus.consumer import JetStreamConsumer
    from amebus.dispatch import Bound
    from amebus.handlers import Handler
    from amebus.pull import Puller
    from amebus.routes import CompiledRoute
    from amebus.watchdog import Slot

__all__ = ["Key", "KeyOrder", "check_key", "check_keys"]

log = logging.getLogger(__name__)

Key: TypeAlias = int | str | Callable[[Any], Hashable]
"""A key: a subject token position (``int``, 0 the first token, ``-1`` the last), an event
attribute name (``str``) or a function of what the handler's first parameter receives."""

_KeyOf = Callable[["Msg", Callable[["Msg"], Any]], Hashable]
"""A compiled key: (message, the handler's argument as a function of it) -> the key."""


def check_key(key: object, where: str) -> None:
    """Refuse a key that is no position, attribute name or function (``where`` starts the
    error); the route's pattern and events are checked by :func:`check_keys`."""
    if key is None or (isinstance(key, str) and key.isidentifier()):
        return
    if (isinstance(key, int) and not isinstance(key, bool)) or (
            callable(key) and not isinstance(key, str)):
        return
    msg = (f"{where} key={key!r}: give a subject token position (an int: key=2 for the id in "
           f"'orders.*.<id>'), an event attribute name (key='order_id') or a function of "
           f"the event (key=lambda event: event.customer)")
    raise ConfigurationError(msg)


def check_keys(owner: str, routes: Iterable[CompiledRoute], key: object) -> None:
    """Check every route's key (its own ``Route(key=)``, else the service-wide ``key``)
    against its full pattern and events.

    Raises:
        ConfigurationError: naming the route, the bad key and the fix.
    """
    check_key(key, owner)
    for route in routes:
        _key_of(route, key, owner)


def _key_of(route: CompiledRoute, service_key: object, owner: str) -> _KeyOf | None:
    own = route.route.key
    key = service_key if own is None else own
    if key is None:
        return None
    if route.route.batch is not None:  # its items reach it in stream order, one batch at a time
        if own is None:
            return None
        msg = (f"{owner}: route {route.name} ({route.pattern!r}) has batch= and key={own!r}; "
               f"a batch route runs one batch at a time with its items in stream order: "
               f"drop key= (docs/batches.md)")
        raise ConfigurationError(msg)
    where = (f"{owner}: route {route.name} ({route.pattern!r})"
             + (" with the service-wide" if own is None else ""))
    fix = (f"; declare key= on the routes that need it instead of {owner}.key"
           if own is None else "")
    if isinstance(key, int) and not isinstance(key, bool):
        index = _position(key, route.tokens, where, fix)
        return lambda msg, arg: msg.subject.split(".", index + 1)[index]
    if isinstance(key, str):
        name = key
        if not route.events:
            msg = (f"{where} key={key!r} names an event attribute, but the handler takes "
                   f"the {route.takes}, not an Event; give a subject token position or a "
                   f"function{fix}")
            raise ConfigurationError(msg)
        for event in route.events:
            fields = [f.name for f in attrs.fields(event)] if attrs.has(event) else []
            if name not in fields:
                msg = (f"{where} key={key!r}: {event.__qualname__} has no attribute {key!r} "
                       f"(its fields: {', '.join(fields) or 'none'}); name one of them{fix}")
                raise ConfigurationError(msg)
        return lambda msg, arg: getattr(arg(msg), name)
    function: Callable[[Any], Hashable] = key  # type: ignore[assignment]
    return lambda msg, arg: function(arg(msg))


def _position(key: int, tokens: tuple[str, ...], where: str, fix: str) -> int:
    """The token index a position names, if every subject of the pattern has it there."""
    count, tail = len(tokens), tokens[-1] == ">"
    pattern = ".".join(tokens)
    if key < 0 and tail:
        msg = (f"{where} key={key}: a position from the end cannot be known under '>' (it "
               f"matches any number of tokens); count from the start (0 is the first token) "
               f"or give a function{fix}")
        raise ConfigurationError(msg)
    index = count + key if key < 0 else key
    if tail and index >= count:
        msg = (f"{where} key={key} lies inside the '>' of {pattern!r}, where the token cannot "
               f"be known (it may not exist): only its first token, position {count - 1}, is "
               f"sure to be there; point the key there or give a function{fix}")
        raise ConfigurationError(msg)
    if not 0 <= index < count:
        msg = (f"{where} key={key} is past the pattern {pattern!r}, which has {count} tokens "
               f"(positions 0 to {count - 1}, or -{count} to -1 from the end); point it at a "
               f"'*' token{fix}")
        raise ConfigurationError(msg)
    if tokens[index] not in ("*", ">"):
        wildcards = ", ".join(str(i) for i, t in enumerate(tokens) if t in ("*", ">"))
        at = f"point it at a wildcard (position {wildcards})" if wildcards else (
            "the pattern has no wildcard")
        msg = (f"{where} key={key} is the literal token {tokens[index]!r} of {pattern!r}: "
               f"every message would have the same key and run one at a time; {at}, or give "
               f"key=lambda _: 'all' to order the whole route{fix}")
        raise ConfigurationError(msg)
    return index


@attrs.define(eq=False)
class _Key:
    """One busy key: a worker runs (or is about to run) one of its messages, or it is held
    for a nak'ed one (``held_seq``) until ``held_until``; ``queue`` are its parked messages."""

    queue: list[tuple[int, int, Msg]] = attrs.Factory(list)  # (stream seq, arrival, msg)
    running: bool = True
    held_seq: int = 0
    held_until: float = 0.0
    ready: Msg | None = None  # released from the queue to any worker: it runs next


class KeyOrder:
    """Runs keyed messages in a consumer's workers: one at a time per key, in stream order.

    Args:
        keys: the compiled key of each keyed route, by route name.
        put_back: puts a released parked message at the front of the pull buffer and wakes a
            worker (``Puller.put_back``); None: it waits for the next ``take`` of a worker.
        stalled: True when no message can be pulled (the window is full of parked ones):
            held keys are released then, since their nak'ed messages cannot come back.
    """

    def __init__(self, keys: dict[str, Callable[[Msg], Hashable]], *,
                 put_back: Callable[[Msg], bool] | None = None,
                 stalled: Callable[[], bool] | None = None) -> None:
        self.keys = keys
        self.put_back = put_back
        self.stalled = stalled
        self.busy: dict[Hashable, _Key] = {}
        """The keys with a message running, released, held or parked."""
        self._ready: deque[Msg] = deque()  # released, still parked, for the next take()
        self._arrival = itertools.count()

    @classmethod
    def of(cls, owner: str, handlers: Iterable[Bound], key: object) -> KeyOrder | None:
        """The key order of a service's bound routes, None when no route has a key.

        Raises:
            ConfigurationError: a bad service-wide ``key`` (``serve(key=...)``).
        """
        check_key(key, f"{owner}.serve()")
        keys: dict[str, Callable[[Msg], Hashable]] = {}
        for bound in handlers:
            key_of = _key_of(bound.route, key, owner)
            if key_of is not None:
                keys[bound.name] = _bind(key_of, bound.arg)
        return cls(keys) if keys else None

    def pulling(self, puller: Puller) -> KeyOrder:
        """Released messages go to the front of ``puller``'s buffer; held keys are released
        when it stalls (returns self)."""
        self.put_back, self.stalled = puller.put_back, lambda: puller.stalled
        return self

    def taking(self, take: Callable[[], Awaitable[Msg | None]], consumer: JetStreamConsumer
               ) -> Callable[[], Awaitable[Msg | None]]:
        """``take`` that first returns the messages released without ``put_back``."""
        if self.put_back is not None:
            return take
        ready = self._ready

        async def take_next() -> Msg | None:
            if ready:  # parked until now: given back if serving stopped before this take
                msg = ready.popleft()
                consumer.unpark(msg)
                return msg
            return await take()

        return take_next

    def key(self, msg: Msg, route: str) -> Hashable | None:
        """``msg``'s key (None: the route has no key, or the message does not decode)."""
        key_of = self.keys.get(route)
        if key_of is None:
            return None
        try:
            key = key_of(msg)
            hash(key)
        except DecodeError:
            return None  # it cannot succeed: run it unordered, it is termed
        except Exception as exc:
            log.warning("the key of route %s failed on %r (%r); the message runs unordered",
                        route, msg.subject, exc)
            return None
        return key

    async def run(self, consumer: JetStreamConsumer, msg: Msg, slot: Slot) -> None:
        """Run ``msg`` now if its key is free, else park it; then the key's next messages."""
        handler = consumer.resolve(msg.subject)
        key = None if handler is None else self.key(msg, handler.name)
        if key is None:
            await consumer.handle(msg, slot, route=handler)
            return
        state = self.busy.get(key)
        if state is None:
            state = self.busy[key] = _Key()
        elif state.ready is msg:
            state.ready = None
        else:
            seq = reply_meta(msg.reply)[1] if msg.reply else 0
            if not state.running and state.held_seq and seq == state.held_seq:
                state.running, state.held_seq = True, 0  # the nak'ed message came back
            else:
                bisect.insort(state.queue, (seq, next(self._arrival), msg),
                              key=lambda e: e[:2])
                consumer.park(msg)
                return
        next_msg: Msg | None = msg
        route: Handler | None = handler  # the first message's, resolved above
        while next_msg is not None:
            try:
                decision = await consumer.handle(next_msg, slot, route=route)
                route = None  # the key's next message may be another route's
            except BaseException:
                state.running = False
                self._release(consumer, key, state)  # the next one goes to any worker
                raise
            if decision.action == "nak":
                state.running = False
                state.held_seq = reply_meta(next_msg.reply)[1] if next_msg.reply else 0
                state.held_until = (time.monotonic() + decision.delay
                                    + consumer.settings.ack_wait)
                if not state.held_seq:
                    self._release(consumer, key, state)
                return
            next_msg = self._next(consumer, key, state)

    def _next(self, consumer: JetStreamConsumer, key: Hashable, state: _Key) -> Msg | None:
        """The key's next parked message, unparked to run now; None (the key is free)."""
        if consumer.stopping:  # its parked messages are given back
            state.running = False
            return None
        if not state.queue:
            del self.busy[key]
            return None
        msg = state.queue.pop(0)[2]
        consumer.unpark(msg)
        return msg

    def _release(self, consumer: JetStreamConsumer, key: Hashable, state: _Key) -> None:
        """Nobody runs the key any more: its next parked message goes to any worker."""
        if consumer.stopping:
            return
        if not state.queue:
            del self.busy[key]
            return
        entry = state.queue.pop(0)
        msg = entry[2]
        state.running, state.ready = True, msg
        if self.put_back is None:
            self._ready.append(msg)  # still parked: the next take() unparks it
            return
        consumer.unpark(msg)
        if not self.put_back(msg):  # the puller stopped: it stays parked, given back
            state.queue.insert(0, entry)
            state.running, state.ready = False, None
            consumer.park(msg)

    def tick(self, consumer: JetStreamConsumer) -> None:
        """Release the keys held past their bound (or all held keys if pulling stalled)."""
        if consumer.stopping:
            return
        now = time.monotonic()
        stalled = self.stalled is not None and self.stalled()
        for key, state in list(self.busy.items()):
            if not state.running and (stalled or state.held_until <= now):
                state.held_seq = 0
                self._release(consumer, key, state)


def _bind(key_of: _KeyOf, arg: Callable[[Msg], Any]) -> Callable[[Msg], Hashable]:
    decode = getattr(arg, "keep", arg)  # dispatch.Remembered: the handler reuses the value
    return lambda msg: key_of(msg, decode)
