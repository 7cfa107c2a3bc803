"""The pull engine: keeps ``MSG.NEXT`` requests outstanding on its own inbox.

Not nats-py's ``fetch()`` (a task, a timer and a uuid per message). One subscription with a
callback fills a buffer; requests are refilled before it runs dry, bounded so that no more
messages are held than can be started soon; idle heartbeats and the connection's reconnect
counter tell when requests were lost, and they are reissued.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["Puller"]

log = logging.getLogger(__name__)


class Puller:
    """Pulls messages of one durable pull consumer into a bounded buffer.

    Args:
        nc: a connected nats-py client.
        stream: the stream name.
        durable: the durable consumer name.
        batch: the most messages held (outstanding in requests plus buffered).
        expires: seconds a pull request lives on the server.
        heartbeat: seconds between the server's idle heartbeats on a waiting request.
        api_prefix: the JetStream API prefix (``$JS.API``).
    """

    def __init__(self, nc: Client, stream: str, durable: str, *, batch: int = 512,
                 expires: float = 30.0, heartbeat: float = 5.0,
                 api_prefix: str = "$JS.API") -> None:
        self._nc = nc
        self._next_subject = f"{api_prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self.batch = max(1, batch)
        self.limit = self.batch  # the current bound; the consumer lowers it for slow handlers
        self._expires_ns = int(expires * 1e9)
        self._heartbeat = heartbeat
        self.pending = 0  # messages requested and not yet received
        self.buffer: deque[Msg] = deque()
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

    async def start(self) -> None:
        """Subscribe the inbox and issue the first request."""
        self._inbox = self._nc.new_inbox()
        # The requests bound what can arrive, so nats-py's slow-consumer limits must not drop.
        self._sub = await self._nc.subscribe(self._inbox, cb=self._on_msg,
                                             pending_msgs_limit=0, pending_bytes_limit=0)
        self._reconnects = self._nc.stats["reconnects"]
        self._last_seen = self._heard = time.monotonic()
        await self.refill()
        self._monitor = asyncio.create_task(self._watch(), name="amebus-pull-monitor")

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
        if self.pending + len(self.buffer) <= self.limit // 2 and not self.closed:
            await self.refill()
        return msg

    async def refill(self) -> None:
        """Request enough messages to bring outstanding plus buffered up to the limit."""
        want = self.limit - self.pending - len(self.buffer)
        if want <= 0 or self.closed or not self._nc.is_connected:
            return
        body = json.dumps({"batch": want, "expires": self._expires_ns,
                           "idle_heartbeat": int(self._heartbeat * 1e9)}).encode()
        self.pending += want
        try:
            await self._nc.publish(self._next_subject, body, reply=self._inbox)
        except Exception as exc:  # disconnected: the monitor reissues once reconnected
            self.pending -= want
            log.debug("pull request failed: %r", exc)

    async def _on_msg(self, msg: Msg) -> None:
        headers = msg.headers
        if headers and not msg.reply and "Status" in headers:
            self._last_seen = self._heard = time.monotonic()
            await self._on_status(headers)
            return
        if self.pending:
            self.pending -= 1
        self.received += 1  # the monitor notices that something arrived
        if (self.urgent_at and not msg.reply.startswith(self.first_reply)
                and _delivery(msg.reply) >= self.urgent_at):
            self.buffer.appendleft(msg)  # the server's last try: run it before the others
        else:
            self.buffer.append(msg)
        if self._waiters:
            self._wake(everyone=False)

    async def _on_status(self, headers: dict[str, str]) -> None:
        status = headers.get("Status", "")
        if status == "100":  # idle heartbeat
            return
        if status == "503":  # no responders: the consumer is gone, or JetStream is not back yet
            self.pending = 0  # no refill here (each 503 would send another request at once):
            self._unanswered = True  # the monitor checks the consumer, then retries
            return
        cancelled = headers.get("Nats-Pending-Messages")
        if cancelled is not None:
            self.pending = max(0, self.pending - int(cancelled))
        description = headers.get("Description", "")
        if status == "409" and description.lower() in ("consumer deleted",
                                                       "consumer is push based"):
            from amebus.errors import ConfigurationError

            msg = (f"the pull consumer behind {self._next_subject!r} answered 409 "
                   f"{description!r}; it was deleted or replaced while serving")
            self.error = ConfigurationError(msg)
            self._wake()
            return
        if status not in ("404", "408") and cancelled is None:
            log.debug("pull status %s %s", status, description)
            self.pending = 0  # the request ended; do not wait for it
        await self.refill()

    def _wake(self, *, everyone: bool = True) -> None:
        """Wake waiting workers: one per new message, or all of them to see an end or error."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                if not everyone:
                    return

    async def _consumer_missing(self) -> bool:
        """True if the server says the consumer (or its stream) does not exist."""
        info = self._next_subject.replace(".CONSUMER.MSG.NEXT.", ".CONSUMER.INFO.", 1)
        try:
            reply = await self._nc.request(info, b"", timeout=2.0)
            error = json.loads(reply.data).get("error") or {}
        except Exception:  # JetStream not answering yet: it may come back
            return False
        return error.get("err_code") in (10014, 10059)  # consumer / stream not found

    async def _watch(self) -> None:
        """Reissue requests lost to a reconnect, a server restart or an expired request."""
        received = self.received
        while not self.closed:
            await asyncio.sleep(min(1.0, self._heartbeat / 2))
            if self._nc.is_closed:  # closed for good (by the user, or by nats-py on an -ERR)
                msg = (f"the connection was closed while pulling from {self._next_subject!r}; "
                       f"no message can arrive or be settled any more, so serving stops")
                self.error = ConnectionError(msg)
                self._wake()
                return
            if self._unanswered and self._nc.is_connected:
                self._unanswered = False
                if await self._consumer_missing():
                    from amebus.errors import ConfigurationError

                    msg = (f"the pull consumer behind {self._next_subject!r} does not exist; "
                           f"it was deleted while serving")
                    self.error = ConfigurationError(msg)
                    self._wake()
                    return
            if self.received != received:
                received, self._last_seen = self.received, time.monotonic()
                self._heard = self._last_seen
            reconnects = self._nc.stats["reconnects"]
            silent = time.monotonic() - self._last_seen > 2 * self._heartbeat
            lost = reconnects != self._reconnects or (silent and self.pending > 0)
            if lost and self._nc.is_connected:
                self._reconnects = reconnects
                self._last_seen = time.monotonic()
                self.pending = 0
            if self.pending + len(self.buffer) <= self.limit // 2:
                await self.refill()


def _delivery(reply: str) -> int:
    """The delivery count in a JetStream reply subject (0 when it has none)."""
    tokens = reply.split(".") if reply else ()
    index = 4 if len(tokens) == 9 else 6 if len(tokens) >= 11 else -1
    return int(tokens[index]) if index >= 0 and tokens[index].isdigit() else 0
