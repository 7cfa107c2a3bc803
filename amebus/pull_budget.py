"""What the pull engine may ask for next: its count window and its byte budget, moved by
requests sent, messages received, requests ended and messages settled (no I/O here).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["PullBudget"]


class PullBudget:
    """The counts and bytes of one pull engine (:class:`amebus.pull.Puller` extends it)."""

    def __init__(self, nc: Client, batch: int, max_bytes: int) -> None:
        self._nc = nc
        self.batch = max(1, batch)
        self.limit = self.batch  # the current bound; the consumer lowers it for slow handlers
        self.pending = 0  # messages requested and not yet received
        self.buffer: deque[Msg] = deque()  # messages received and not yet taken
        self.parked: dict[str, Msg] = {}
        """Messages the consumer took and parked unstarted (waiting for their key, or
        collected into a batch), by reply subject: they count against the window like the
        buffer, so parking never over-fetches."""
        self.max_bytes = max(1, max_bytes)
        self.reserved = 0  # bytes requested and not yet received (by the server's count)
        self.unsettled = 0  # bytes received and not yet released
        self._held: dict[str, int] = {}  # reply subject -> bytes, until released
        self._requests = 0  # requests out; each ends with a status, as it carries max_bytes
        self._alone = False  # the next message is larger than a request's share: ask alone

    def _due(self) -> tuple[int, int]:
        """(messages, bytes) of the request to send now; (0, 0) when none is due.

        A request asks for at least half the count window and half the byte budget (no
        trickle of tiny requests), so two requests overlap; a message larger than half the
        budget is asked for alone once no other request is out.
        """
        if self._alone:
            if self._requests:
                return 0, 0
            max_payload = int(getattr(self._nc, "max_payload", 0) or 0)
            return 1, max(self.max_bytes, 2 * max_payload + 65536)
        count = self.limit - self.pending - len(self.buffer) - len(self.parked)
        share = (self.max_bytes + 1) // 2
        room = self.max_bytes - self.reserved - self.unsettled
        if count < self.limit - self.limit // 2 or room < share:
            return 0, 0
        return count, share

    @property
    def waiting(self) -> int:
        """Messages pulled and not yet started: buffered, or parked by the consumer."""
        return len(self.buffer) + len(self.parked)

    @property
    def stalled(self) -> bool:
        """Nothing is requested, buffered or due: the window is full of parked messages."""
        return not self.pending and not self.buffer and not self._due()[0]

    def _sent(self, want: int, nbytes: int, *, undo: bool = False) -> None:
        """A request for ``want`` messages and ``nbytes`` went out (``undo``: it failed)."""
        sign = -1 if undo else 1
        self.pending += sign * want
        self.reserved += sign * nbytes
        self._requests += sign

    def _count_bytes(self, msg: Msg, header_bytes: int) -> None:
        """Move a message's bytes from requested to held (sized as the server counts them:
        ``header_bytes`` is its header block's size)."""
        reply = msg.reply
        size = len(msg.subject) + len(reply) + len(msg.data) + header_bytes
        reserved = self.reserved - size
        self.reserved = reserved if reserved > 0 else 0
        if reply:
            held = self._held
            self.unsettled += size - held.get(reply, 0)
            held[reply] = size
        self._alone = False

    def _settled(self, msg: Msg) -> bool:
        """``msg``'s bytes leave the budget; False if it was not held (released already)."""
        size = self._held.pop(msg.reply, None)
        if size is None:
            return False
        self.unsettled -= size
        return True

    def _request_ended(self, left_bytes: int | None) -> None:
        """A request ended; the server says how many of its bytes it did not use."""
        self._requests -= 1
        if left_bytes is not None:
            self.reserved = max(0, self.reserved - left_bytes)
        if self._requests <= 0 or left_bytes is None:  # none out (or unknown): start afresh
            self._requests = self.pending = self.reserved = 0
