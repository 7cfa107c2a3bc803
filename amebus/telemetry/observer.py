"""The observer interface: what a serving service tells telemetry, and at which points.

The consumer calls an :class:`Observer` where a delivery starts, where its handler returns,
where a failure is traced and where the decision is sent; ``serve`` calls ``start``/``stop``
around serving. With no observer configured none of these calls is made.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

    from amebus.consumer import JetStreamConsumer
    from amebus.handlers import Handler
    from amebus.pull import Puller
    from amebus.service import Service
    from amebus.tracing import Decision, Failure

__all__ = ["BaseObserver", "ConsumerLag", "Observer", "Observers", "Serving",
           "check_observer"]

log = logging.getLogger(__name__)


class ConsumerLag:
    """The consumer's lag from ``CONSUMER.INFO``, polled at most every ``interval`` seconds.

    Started by the first observer that needs it (``start()`` is idempotent); the values are the
    last poll's (-1 before the first answer).
    """

    def __init__(self, nc: Client, stream: str, durable: str, interval: float = 5.0) -> None:
        self._nc, self.stream, self.durable, self.interval = nc, stream, durable, interval
        self.num_pending = self.num_ack_pending = self.num_redelivered = self.num_waiting = -1
        self.updated_at = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start polling (once)."""
        if self._task is None:
            self._task = asyncio.create_task(self._poll(), name="amebus-lag")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll_once(self) -> None:
        """Ask the server now."""
        info = await self._nc.jetstream().consumer_info(self.stream, self.durable, timeout=2.0)
        self.num_pending = info.num_pending or 0
        self.num_ack_pending = info.num_ack_pending or 0
        self.num_redelivered = info.num_redelivered or 0
        self.num_waiting = info.num_waiting or 0
        self.updated_at = time.monotonic()

    async def _poll(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception as exc:  # disconnected, or JetStream not back yet: keep the last
                log.debug("consumer info for %s/%s failed: %r", self.stream, self.durable, exc)
            await asyncio.sleep(self.interval)


@attrs.frozen(eq=False)
class Serving:
    """What an observer gets when serving starts: the service and its running engine."""

    service: Service
    nc: Client
    stream: str
    durable: str
    consumer: JetStreamConsumer
    puller: Puller
    lag: ConsumerLag

    @property
    def name(self) -> str:
        """The service's class name."""
        return type(self.service).__name__


class Observer(Protocol):
    """Receives a serving service's lifecycle and every delivery's fate.

    The per-message methods run on the event loop in the worker handling the message: keep
    them quick and never raise (an exception there fails the message's worker).
    """

    async def start(self, serving: Serving) -> None:
        """Serving started: the consumer is bound and the first pull request is out."""

    async def stop(self) -> None:
        """Serving stopped (every message is settled or given back)."""

    def delivery_started(self, msg: Msg, handler: Handler) -> None:
        """``handler`` starts on ``msg`` (in the worker task that runs it)."""

    def handler_finished(self, msg: Msg, handler: Handler, seconds: float) -> None:
        """``handler`` returned or raised after ``seconds``."""

    def failed(self, failure: Failure) -> None:
        """A failure was traced (before its dead-letter copy is published)."""

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """``decision`` is being sent for ``msg``; ``handler`` is None when no route ran. Also
        called when the handler settled ``msg`` itself: ``decision`` is then amebus's own,
        which is not sent."""


class Observers:
    """Several observers as one, called in order (stopped in reverse).

    Per-message methods an observer inherits unchanged from :class:`BaseObserver` are left
    out of the fan-out, and a method only one observer implements is that observer's own.
    """

    delivery_started: Callable[[Msg, Handler], None]
    handler_finished: Callable[[Msg, Handler, float], None]
    failed: Callable[[Failure], None]
    settled: Callable[[Msg, Decision, Handler | None], None]

    def __init__(self, *observers: Observer) -> None:
        self.observers = observers
        for name in ("delivery_started", "handler_finished", "failed", "settled"):
            noop = getattr(BaseObserver, name)
            calls = [_guarded(getattr(o, name)) for o in observers
                     if getattr(type(o), name, None) is not noop]
            setattr(self, name, calls[0] if len(calls) == 1 else _fanout(calls))

    async def start(self, serving: Serving) -> None:
        """Start each observer in order."""
        for observer in self.observers:
            await observer.start(serving)

    async def stop(self) -> None:
        """Stop each observer in reverse order; one that fails is logged, the rest stop."""
        for observer in reversed(self.observers):
            try:
                await observer.stop()
            except Exception:
                log.exception("observer %r failed to stop", observer)


def _guarded(call: Callable[..., None]) -> Callable[..., None]:
    """``call``, never raising: telemetry must not stop a worker or change a settlement. The
    first failure is logged with its traceback, later ones at DEBUG."""
    failed = False

    def guarded(*args: Any) -> None:
        nonlocal failed
        try:
            call(*args)
        except Exception:
            log.log(logging.DEBUG if failed else logging.ERROR,
                    "observer %r raised; serving goes on, the message is settled as decided",
                    call, exc_info=True)
            failed = True

    return guarded


def _fanout(calls: list[Callable[..., None]]) -> Callable[..., None]:
    def every(*args: Any) -> None:
        for call in calls:
            call(*args)

    return every


class BaseObserver:
    """An observer doing nothing: subclass it and override what you need."""

    async def start(self, serving: Serving) -> None:
        """Nothing."""

    async def stop(self) -> None:
        """Nothing."""

    def delivery_started(self, msg: Msg, handler: Handler) -> None:
        """Nothing."""

    def handler_finished(self, msg: Msg, handler: Handler, seconds: float) -> None:
        """Nothing."""

    def failed(self, failure: Failure) -> None:
        """Nothing."""

    def settled(self, msg: Msg, decision: Decision, handler: Handler | None) -> None:
        """Nothing."""


_METHODS = ("start", "stop", "delivery_started", "handler_finished", "failed", "settled")


def check_observer(owner: str, observer: object) -> None:
    """Raise ``ConfigurationError`` unless ``observer`` is None or an Observer instance."""
    if observer is None:
        return
    missing = [m for m in _METHODS if not callable(getattr(observer, m, None))]
    if isinstance(observer, type) or missing:
        from amebus.errors import ConfigurationError

        what = "a class; pass an instance" if isinstance(observer, type) else (
            f"missing {', '.join(missing)}")
        msg = (f"{owner}: observer {observer!r} is not an Observer ({what}); subclass "
               f"amebus.telemetry.BaseObserver, or combine several with Observers(...)")
        raise ConfigurationError(msg)
