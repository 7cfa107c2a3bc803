"""The pull side of a priority group: what each ``MSG.NEXT`` request carries, and the pin.

:class:`PriorityPull` is the hook of :class:`~amebus.pull.Puller` for a service with
``standby`` or ``overflow`` (:mod:`amebus.priority`):

- every request carries ``group``; an overflow member adds its ``min_pending`` /
  ``min_ack_pending``; a pinned instance adds ``id``, the ``Nats-Pin-Id`` header of the
  messages the server delivers to it;
- each request's reply subject ends in a tag (``<inbox>.<gen>``, ``n`` for a request sent
  without an id) because a 423 means "this request's id is not the pin": on a request sent
  with the current id it is the loss of the pin (clear the id, stay a candidate: the next
  requests go without one); on an older request (say, one sent without an id just before
  this instance was pinned) it means nothing;
- the server moves the pin after ``priority_timeout`` without a pull carrying the id, also
  from a busy instance whose window is full and so sends no request: while pinned, a
  keep-alive pull (``batch`` 1, ``max_bytes`` 1: it can never take a message) goes out
  every quarter of the timeout without another pull;
- stopping while pinned unpins, so a standby takes over at once instead of after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from amebus.priority import GROUP, Overflow

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["PriorityPull", "for_service"]

log = logging.getLogger(__name__)


class PriorityPull:
    """The priority-group state of one pull engine.

    Args:
        nc: the client the engine pulls on.
        next_subject: the durable's ``MSG.NEXT`` subject.
        timeout: the consumer's ``priority_timeout`` in seconds (standby), or None (overflow).
        overflow: this instance's :class:`~amebus.priority.Overflow` (overflow), or None.
        on_pinned, on_unpinned: called when the pin is gained (with its id) and lost.
        name: the service, for the log.
    """

    def __init__(self, nc: Client, next_subject: str, *, timeout: float | None = None,
                 overflow: Overflow | None = None,
                 on_pinned: Callable[[str], Any] | None = None,
                 on_unpinned: Callable[[], Any] | None = None, name: str = "") -> None:
        self._nc, self._next_subject, self._name = nc, next_subject, name
        self.timeout, self.overflow = timeout, overflow
        self._on_pinned, self._on_unpinned = on_pinned, on_unpinned
        self.pin_id: str | None = None
        self.gains = self.losses = 0
        self._gen = 0  # bumped with each pin id: tags the requests sent with it
        self._inbox = ""
        self._pulled_at = 0.0  # the last request that carried the pin id
        self._keeper: asyncio.Task[None] | None = None
        self._hooks: set[asyncio.Task[Any]] = set()

    def subscription(self, inbox: str) -> str:
        """The subject the engine subscribes instead of ``inbox`` (every request's tag)."""
        self._inbox = inbox
        return f"{inbox}.*"

    def prepare(self, body: dict[str, Any]) -> str:
        """Add the group fields to a request ``body``; return its reply subject."""
        body["group"] = GROUP
        if self.overflow is not None:
            body.update(self.overflow.fields())
        if self.pin_id is None:
            return f"{self._inbox}.n"
        body["id"] = self.pin_id
        self._pulled_at = time.monotonic()
        return f"{self._inbox}.{self._gen}"

    def observe(self, msg: Msg) -> bool:
        """See a message or status on the inbox; True if it is a keep-alive's (not the
        engine's: it ends none of its requests)."""
        headers = msg.headers or {}
        if msg.reply:  # a message, on its own subject: the engine's (a keep-alive fits none)
            pin = headers.get("Nats-Pin-Id")
            if pin and pin != self.pin_id:
                self._gained(pin)
            return False
        tag = msg.subject.rsplit(".", 1)[-1]  # a status comes on its request's reply subject
        if headers.get("Status") == "423" and tag in (
                str(self._gen), f"k{self._gen}") and self.pin_id is not None:
            self._lost(headers.get("Description", ""))
        return tag.startswith("k")

    def start(self) -> None:
        """Start the keep-alive pulls (standby only)."""
        if self.timeout is not None:
            self._keeper = asyncio.create_task(self._keep(), name="amebus-pin-keeper")

    async def stop(self, *, unpin: bool) -> None:
        """Stop the keep-alive; when pinned, unpin (``unpin``) and call ``on_unpinned``."""
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if self.pin_id is not None:
            if unpin and self._nc.is_connected:
                subject = self._next_subject.replace(".MSG.NEXT.", ".UNPIN.", 1)
                with contextlib.suppress(Exception):  # the timeout moves it anyway
                    await self._nc.request(subject, json.dumps({"group": GROUP}).encode(),
                                           timeout=2.0)
            self._lost("stopped serving")
        for task in list(self._hooks):
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await task

    async def _keep(self) -> None:
        assert self.timeout is not None
        period = self.timeout / 4
        body = json.dumps({"batch": 1, "max_bytes": 1, "expires": int(period * 1e9),
                           "group": GROUP})
        while True:
            await asyncio.sleep(period)
            if (self.pin_id is None or not self._nc.is_connected
                    or time.monotonic() - self._pulled_at < period):
                continue
            payload = f'{body[:-1]}, "id": {json.dumps(self.pin_id)}}}'.encode()
            with contextlib.suppress(Exception):  # disconnected: the next round tries again
                await self._nc.publish(self._next_subject, payload,
                                       reply=f"{self._inbox}.k{self._gen}")
                self._pulled_at = time.monotonic()

    def _gained(self, pin: str) -> None:
        if self.pin_id is not None:
            self._lost("the server pinned it again with a new id")
        self.pin_id, self._gen = pin, self._gen + 1
        self._pulled_at = time.monotonic()
        self.gains += 1
        log.info("%s: pinned (pin id %s): this instance now consumes %s", self._name, pin,
                 self._next_subject.rsplit(".", 2)[-1])
        self._call(self._on_pinned, pin)

    def _lost(self, why: str) -> None:
        pin, self.pin_id = self.pin_id, None
        self.losses += 1
        log.info("%s: unpinned (pin id %s: %s): standing by", self._name, pin, why)
        self._call(self._on_unpinned)

    def _call(self, hook: Callable[..., Any] | None, *args: Any) -> None:
        if hook is None:
            return
        try:
            result = hook(*args)
        except Exception:
            log.exception("%s: a pin hook raised", self._name)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._hooks.add(task)
            task.add_done_callback(self._hook_done)

    def _hook_done(self, task: asyncio.Future[Any]) -> None:
        self._hooks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: a pin hook raised", self._name, exc_info=task.exception())


def for_service(service: Any, nc: Client, next_subject: str,
                options: dict[str, Any]) -> PriorityPull | None:
    """The priority hook of ``service`` serving with ``options`` (None: no priority group)."""
    name = type(service).__name__
    if options.get("standby"):
        return PriorityPull(nc, next_subject, timeout=float(options["priority_timeout"]),
                            on_pinned=service.on_pinned, on_unpinned=service.on_unpinned,
                            name=name)
    if options.get("overflow") is not None:
        return PriorityPull(nc, next_subject, overflow=options["overflow"], name=name)
    return None
