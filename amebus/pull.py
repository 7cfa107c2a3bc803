"""The pull engine: keeps ``MSG.NEXT`` requests outstanding on its own inbox.

Not nats-py's ``fetch()`` (a task, a timer and a uuid per message). One subscription with a
callback fills a buffer; requests are refilled before it runs dry, bounded so that no more
messages are held than can be started soon, and bounded in bytes: every request carries
``max_bytes``, and the bytes requested plus the bytes received and not yet settled stay under
``max_bytes_in_flight`` (a message larger than that is requested alone). Idle heartbeats and
the connection's reconnect counter tell when requests were lost, and they are reissued; when
heartbeats stop and a PING gets no PONG, the connection is dead and is replaced. The counts
and bytes are kept by :class:`~amebus.pull_budget.PullBudget`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from amebus import _natsio, _natsparse
from amebus._health import ConnectionHealth, consumer_missing
from amebus.errors import ConfigurationError
from amebus.pull_budget import PullBudget
from amebus.settlement import deliveries_of
from amebus.wire import header_size

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

    from amebus.pinning import PriorityPull

__all__ = ["Puller"]

log = logging.getLogger(__name__)


class Puller(PullBudget):
    """Pulls messages of one durable pull consumer into a bounded buffer.

    Args:
        nc: a connected nats-py client.
        stream: the stream name.
        durable: the durable consumer name.
        batch: the most messages held (outstanding in requests plus buffered).
        max_bytes: the most bytes requested plus received and not yet released (settled).
        expires: seconds a pull request lives on the server.
        heartbeat: seconds between the server's idle heartbeats on a waiting request.
        api_prefix: the JetStream API prefix (``$JS.API``).
    """

    def __init__(self, nc: Client, stream: str, durable: str, *, batch: int = 512,
                 max_bytes: int = 16 * 1024 * 1024, expires: float = 30.0,
                 heartbeat: float = 5.0, api_prefix: str = "$JS.API") -> None:
        super().__init__(nc, batch, max_bytes)
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._expires_ns = int(expires * 1e9)
        self._heartbeat = heartbeat
        self._waiters: deque[asyncio.Future[None]] = deque()  # workers waiting in next()
        self._sub: Subscription | None = None
        self._inbox = ""
        self._last_seen = 0.0
        self._heard = 0.0
        self._reconnects = 0
        self._monitor: asyncio.Task[None] | None = None
        self.closed = False
        self.received = 0
        self.error: BaseException | None = None
        self._unanswered = False  # a request got 503: nothing serves the consumer's subject
        self.urgent_at = 0  # deliveries from which a message jumps the queue (0: never)
        self.first_reply = f"$JS.ACK.{stream}.{durable}.1."  # a first delivery's reply prefix
        self._refilling: asyncio.Task[None] | None = None  # a refill that release() started
        self.health = ConnectionHealth(nc, self._next_subject, heartbeat)
        self.priority: PriorityPull | None = None  # a priority group's fields and pin
        self.direct = False  # the parser delivers the inbox's messages itself

    async def start(self) -> None:
        """Subscribe the inbox and issue the first request."""
        _natsparse.install_parser(self._nc)  # hostile subjects reach amebus, not a dead reader
        _natsio.last_error(self._nc)  # start recording why connections are lost
        self._inbox = self._nc.new_inbox()
        subject = self._inbox if self.priority is None else self.priority.subscription(self._inbox)
        # The requests bound what can arrive, so nats-py's slow-consumer limits must not drop.
        self._sub = await self._nc.subscribe(subject, cb=self._on_queued,
                                             pending_msgs_limit=0, pending_bytes_limit=0)
        # The parser gives the inbox's messages to _on_msg itself (where nats-py allows it):
        # no Client._process_msg, subscription queue or task step per message.
        self.direct = _natsparse.deliver_directly(self._nc, self._sub, self._on_msg)
        self._reconnects = self._nc.stats["reconnects"]
        self._last_seen = self._heard = time.monotonic()
        await self.refill()
        self._monitor = asyncio.create_task(self._watch(), name="amebus-pull-monitor")
        if self.priority is not None:
            self.priority.start()

    @property
    def heard_at(self) -> float:
        """``time.monotonic()`` when the server was last heard from: a status such as an idle
        heartbeat, or (to within the monitor's period) a message. Reissuing requests does not
        move it, so a stalled consumer shows as an ever older value."""
        return self._heard

    @property
    def heartbeat(self) -> float:
        """Seconds between the server's idle heartbeats on a waiting request."""
        return self._heartbeat

    async def stop(self) -> list[Msg]:
        """Stop requesting, drain the inbox, and return every message not yet taken."""
        self.closed = True
        if self._refilling is not None:
            self._refilling.cancel()
        if self._monitor is not None:
            self._monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._monitor
        if self._sub is not None and self._nc.is_connected:
            with contextlib.suppress(Exception):
                await self._sub.drain()  # type: ignore[no-untyped-call]  # everything the server sent before UNSUB arrives
        elif self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._sub is not None:
            _natsparse.stop_delivering(self._nc, self._sub)
        left = list(self.buffer)
        self.buffer.clear()
        self._wake()
        return left

    async def next(self) -> Msg | None:
        """The next message, waiting for one; None once stopped."""
        while not self.buffer:
            if self.closed:
                return None
            if self.error is not None:
                raise self.error
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                raise
        msg = self.buffer.popleft()
        if self.pending + self.waiting <= self.limit // 2 and not self.closed:
            await self.refill()  # half the count window is free: sent if the bytes allow
        return msg

    def put_back(self, msg: Msg) -> bool:
        """Put a message taken earlier (a parked one free to start) at the front of the
        buffer and wake a worker; False once stopped (the caller keeps it)."""
        if self.closed:
            return False
        self.buffer.appendleft(msg)
        self._wake(everyone=False)
        return True

    def release(self, msg: Msg) -> None:
        """``msg`` is settled: its bytes leave the budget (once; unknown messages are ignored)."""
        if not self._settled(msg):
            return
        if (self.pending + self.waiting <= self.limit // 2 and not self.closed
                and self._due()[0] and self._refilling is None):
            self._refilling = asyncio.get_running_loop().create_task(self.refill())
            self._refilling.add_done_callback(lambda _: setattr(self, "_refilling", None))

    async def refill(self) -> None:
        """Send the request that is due (by count and by bytes), if any."""
        if self.closed or not self._nc.is_connected:
            return
        want, nbytes = self._due()
        if not want:
            return
        request = {"batch": want, "max_bytes": nbytes, "expires": self._expires_ns,
                   "idle_heartbeat": int(self._heartbeat * 1e9)}
        reply = self._inbox if self.priority is None else self.priority.prepare(request)
        self._sent(want, nbytes)
        try:
            await self._nc.publish(self._next_subject, json.dumps(request).encode(), reply=reply)
        except Exception as exc:  # disconnected: the monitor reissues once reconnected
            self._sent(want, nbytes, undo=True)
            log.debug("pull request failed: %r", exc)

    async def _on_queued(self, msg: Msg) -> None:
        """The subscription's callback, where the parser does not deliver directly."""
        pending = self._on_msg(msg, header_size(msg.headers))
        if pending is not None:
            await pending

    def _on_msg(self, msg: Msg, header_bytes: int) -> Awaitable[None] | None:
        """Take one message from the inbox (``header_bytes``: its header block's size); a
        status returns its handling, to be awaited."""
        headers = msg.headers
        if self.priority is not None and self.priority.observe(msg):
            return None  # a keep-alive pull's answer: none of the engine's requests
        if headers and not msg.reply and "Status" in headers:
            self._last_seen = self._heard = time.monotonic()
            return self._on_status(headers)
        if self.pending:
            self.pending -= 1
        self._count_bytes(msg, header_bytes)
        self.received += 1  # the monitor notices that something arrived
        if (self.urgent_at and not msg.reply.startswith(self.first_reply)
                and deliveries_of(msg.reply) >= self.urgent_at):
            self.buffer.appendleft(msg)  # the server's last try: run it before the others
        else:
            self.buffer.append(msg)
        if self._waiters:
            self._wake(everyone=False)
        return None

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat
            return
        if status == "503":  # no responders: the consumer is gone, or JetStream is not back yet
            self._request_ended(None)  # no refill here (each 503 would send another request
            self._unanswered = True  # at once): the monitor checks the consumer, then retries
            return
        cancelled = headers.get("Nats-Pending-Messages")
        if cancelled is not None:
            self.pending = max(0, self.pending - int(cancelled))
        left = headers.get("Nats-Pending-Bytes")
        description = headers.get("Description", "")
        if description == "Message Size Exceeds MaxBytes" and int(left or 0) >= (
                self.max_bytes + 1) // 2:  # nothing fitted a whole share: the next message
            self._alone = True  # is larger than half the budget; it is asked for alone
        self._request_ended(int(left) if left is not None else None)  # every status ends one
        if status == "409" and description.lower() in ("consumer deleted",
                                                       "consumer is push based"):
            msg = (f"the pull consumer behind {self._next_subject!r} answered 409 "
                   f"{description!r}; it was deleted or replaced while serving")
            self._stop(ConfigurationError(msg))
            return
        if status == "409" and description.startswith("Exceeded MaxRequest"):
            msg = (f"the pull consumer behind {self._next_subject!r} refuses amebus's pull "
                   f"requests: 409 {description!r}; lower batch or max_bytes_in_flight, or "
                   f"raise the consumer's max_request_batch / max_request_max_bytes")
            self._stop(ConfigurationError(msg))
            return
        if status not in ("404", "408") and cancelled is None:
            log.debug("pull status %s %s", status, description)
        await self.refill()

    def _stop(self, error: BaseException) -> None:
        """Serving must stop: every waiting worker raises ``error``."""
        self.error = error
        self._wake()

    def _wake(self, *, everyone: bool = True) -> None:
        """Wake waiting workers: one per new message, or all of them to see an end or error."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    async def _watch(self) -> None:
        """Reissue requests lost to a reconnect, a server restart or an expired request."""
        received = self.received
        while not self.closed:
            await asyncio.sleep(min(1.0, self._heartbeat / 2))
            if self._nc.is_closed:  # closed for good (by the user, or by nats-py on an -ERR)
                msg = (f"the connection was closed while pulling from {self._next_subject!r}; "
                       f"no message can arrive or be settled any more, so serving stops")
                self._stop(ConnectionError(msg))
                return
            if self._unanswered and self._nc.is_connected:
                self._unanswered = False
                if await consumer_missing(self._nc, self._next_subject):
                    msg = (f"the pull consumer behind {self._next_subject!r} does not exist; "
                           f"it was deleted while serving")
                    self._stop(ConfigurationError(msg))
                    return
            if self.received != received:
                received, self._last_seen = self.received, time.monotonic()
                self._heard = self._last_seen
                self.health.arrived()
            reconnects = self._nc.stats["reconnects"]
            silent = time.monotonic() - self._last_seen > 2 * self._heartbeat
            if silent and self._requests > 0 and self._nc.is_connected and not await (
                    self.health.answers()):
                self._last_seen = time.monotonic()
                error = await self.health.replace()
                if error is not None:
                    self._stop(error)
                    return
                continue
            if reconnects != self._reconnects and self._nc.is_connected:
                self.health.reconnected(reconnects - self._reconnects)
            lost = reconnects != self._reconnects or (silent and self._requests > 0)
            if lost and self._nc.is_connected:
                self._reconnects = reconnects
                self._last_seen = time.monotonic()
                self._request_ended(None)
            if self._due()[0]:
                await self.refill()

