"""Settlement replies (``+ACK``, ``-NAK``, ``+TERM``, ``+WPI``) written straight into nats-py's
outgoing buffer, flushed once per event-loop turn: no ``nc.publish`` call per message.

``nc.publish`` costs about 2 µs per ack on nats-py 2.16 (issue 20's profile: a subject regex,
an f-string, three coroutine frames and a flush-queue check per call). A reply to a
``$JS.ACK`` subject needs none of it: :meth:`Replies.write` appends
``PUB <reply> <len>\\r\\n<payload>\\r\\n`` to the client's pending list (``_pending``,
``_pending_data_size``, as ``Client._send_command`` does) and, once per loop turn, kicks
nats-py's own flusher task through its ``_flush_queue`` (as ``Client._send_publish`` does when
that queue is empty), so the socket write, its errors and reconnection stay nats-py's. The
bytes join the same buffer in the same order as every other publish on the connection.

The guard (nats-py has no public call for this):

- only on the nats-py versions in ``TESTED`` (``nats.aio.client.__version__``, whose source
  was read and whose tests ran), and only when the client is a plain ``nats.aio.client.Client``
  (``publish`` not overridden) whose private attributes have the expected types;
- per reply, only while the client is ``CONNECTED`` (not connecting, reconnecting, draining or
  closed), its flusher task runs, the reply is printable with no space (so no tab, CR or LF:
  what nats-py 2.16 refuses in a subject) and the command fits the pending-buffer limit and
  ``max_payload``.

Where the guard fails, :meth:`Replies.write` returns False and the caller awaits
``nc.publish`` as before: a reply sent while reconnecting is buffered or refused exactly as
nats-py does it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["TESTED", "Replies"]

log = logging.getLogger(__name__)

TESTED = frozenset({"2.15.0", "2.16.0"})
"""The nats-py versions whose ``Client`` internals :class:`Replies` was read and tested on."""

_TAILS = {payload: b" %d\r\n%s\r\n" % (len(payload), payload)
          for payload in (b"+ACK", b"+WPI", b"-NAK", b"+TERM")}
"""``<len>\\r\\n<payload>\\r\\n`` of the replies without a body, built once."""


def _fast_path(nc: Any) -> str | None:
    """Why ``nc`` cannot take replies in its buffer (None: it can)."""
    try:
        from nats.aio import client
    except ImportError:  # pragma: no cover: amebus depends on nats-py
        return "nats-py is not importable"
    version = getattr(client, "__version__", None)
    if version not in TESTED:
        return f"nats-py {version!r} is not one of the tested versions {sorted(TESTED)}"
    if type(nc) is not client.Client or "publish" in vars(nc):
        return f"{type(nc).__name__} is not a plain nats.aio.client.Client"
    expected: dict[str, type | tuple[type, ...]] = {
        "_pending": list, "_pending_data_size": int, "_max_pending_size": int,
        "_max_payload": int, "_status": int, "stats": dict,
        "_flush_queue": (asyncio.Queue, type(None)),
        "_flusher_task": (asyncio.Task, type(None)),
    }
    for name, kind in expected.items():
        if not isinstance(getattr(nc, name, None), kind):
            return f"the client's {name} is not a {kind}"
    if getattr(client.Client, "CONNECTED", None) != 1:
        return "nats.aio.client.Client.CONNECTED is not 1"
    return None


class Replies:
    """Writes settlement replies for one nats-py client into its outgoing buffer.

    Args:
        nc: the client the messages came on.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.refused = _fast_path(nc)
        """Why replies go through ``nc.publish`` (None: they are written to the buffer)."""
        if self.refused is not None:
            log.debug("settlement replies go through nc.publish: %s", self.refused)
        self.fast = self.refused is None
        self._scheduled = False
        self._kick: Callable[[], None] = self._turn_ended
        self._done: asyncio.Future[None] | None = None
        self._msgs = self._bytes = 0  # written since the last turn ended (for nc.stats)

    def write(self, reply: str, payload: bytes) -> bool:
        """Append ``PUB reply len`` + ``payload`` to the client's buffer (flushed this loop
        turn) and return True; return False (nothing written) where the guard says to use
        ``nc.publish``."""
        if not self.fast:
            return False
        nc: Any = self.nc
        if nc._status != 1:
            return False  # not CONNECTED: reconnecting, draining or closed
        if not reply or " " in reply or not reply.isprintable():
            return False  # a space, tab, CR or LF: what nats-py 2.16 refuses in a subject (a
            # protocol injection); other unprintables go through nc.publish too
        flusher = nc._flusher_task
        if flusher is None or flusher.done():
            return False  # nats-py flushes inline then
        tail = _TAILS.get(payload)
        if tail is None:
            if len(payload) > nc._max_payload:
                return False
            tail = b" %d\r\n%s\r\n" % (len(payload), payload)
        command = b"PUB " + reply.encode() + tail
        size = nc._pending_data_size + len(command)
        if nc._max_pending_size > 0 and size > nc._max_pending_size:
            return False  # nc.publish flushes by force first
        nc._pending.append(command)
        nc._pending_data_size = size
        self._msgs += 1
        self._bytes += len(payload)
        if not self._scheduled:
            self._schedule()
        return True

    def _schedule(self) -> None:
        self._scheduled = True
        asyncio.get_running_loop().call_soon(self._kick)

    def _turn_ended(self) -> None:
        self._scheduled = False
        nc: Any = self.nc
        if self._msgs:  # nats-py counts what publish sends; so do these, once per turn
            stats = nc.stats
            stats["out_msgs"] += self._msgs
            stats["out_bytes"] += self._bytes
            self._msgs = self._bytes = 0
        queue = nc._flush_queue
        if not nc._pending_data_size or queue is None or not queue.empty():
            return  # nothing left, or the flusher is already kicked (it takes it all)
        if nc._status != 1:
            return  # reconnecting: nats-py flushes the buffer once connected again
        done = self._done
        if done is None:  # the flusher resolves a future per kick; a resolved one is skipped
            done = self._done = asyncio.get_running_loop().create_future()
            done.set_result(None)
        queue.put_nowait(done)
