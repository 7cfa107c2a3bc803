"""Health of the pull engine: is a silent connection dead (then replace it), is the consumer
still there.

The pull engine calls :meth:`ConnectionHealth.answers` when the server's idle heartbeats
have stopped while requests are out: a PING bounded in time (``flush``). With no PONG the
connection is dead (half-open: the network dropped the flow without telling either end), and
:meth:`ConnectionHealth.replace` makes nats-py drop it and reconnect now, through
:mod:`amebus._natsio`; a connection made with reconnects off ends serving instead.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from amebus import _natsio

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["ConnectionHealth", "consumer_missing"]

log = logging.getLogger("amebus.pull")


class ConnectionHealth:
    """Counts and logs lost and dead connections of one pull engine.

    Args:
        nc: the client pulled on.
        subject: the pull requests' subject (named in the log lines).
        heartbeat: seconds between the server's idle heartbeats; also the PING's bound.
    """

    def __init__(self, nc: Client, subject: str, heartbeat: float) -> None:
        self._nc, self._subject, self._heartbeat = nc, subject, heartbeat
        self.disconnects = 0  # connections lost (any cause), seen by the reconnect counter
        self.dead_connections = 0  # connections found dead (no heartbeat, no PONG)
        self.dead_at: float | None = None  # when the last dead connection was found
        self.replacing = False  # found dead, not reconnected yet

    async def answers(self) -> bool:
        """True if the server answers a PING within a heartbeat period (or it is not ours to
        judge: the connection is already reconnecting)."""
        try:
            await self._nc.flush(timeout=max(1, round(self._heartbeat)))
        except Exception:
            return not self._nc.is_connected
        return True

    async def replace(self) -> ConnectionError | None:
        """The connection is dead: have nats-py replace it; the error that ends serving when
        it cannot be replaced (reconnects off), else None."""
        self.dead_connections += 1
        self.dead_at = time.monotonic()
        self.replacing = True
        quiet = 2 * self._heartbeat
        if not _natsio.reconnects_allowed(self._nc):
            msg = (f"the connection to NATS is dead (no idle heartbeat on {self._subject!r} "
                   f"for {quiet:g}s, no PONG within {self._heartbeat:g}s) and it was made with "
                   f"allow_reconnect=False, so it cannot be replaced and serving stops; connect "
                   f"with max_reconnect_attempts=-1 to have amebus reconnect instead")
            log.error("%s", msg)
            await _natsio.replace_connection(self._nc)  # nats-py closes it, as its pings would
            return ConnectionError(msg)
        log.warning("the connection to NATS is dead: no idle heartbeat on %s for %gs and no "
                    "PONG within %gs; dropping it and reconnecting", self._subject, quiet,
                    self._heartbeat)
        if not await _natsio.replace_connection(self._nc):
            log.warning("this nats-py cannot be told to reconnect; its own pings will find the "
                        "dead connection after %ss", _natsio.detection_seconds(self._nc))
        return None

    def reconnected(self, times: int) -> None:
        """nats-py reconnected ``times`` times since the last look: log it once, with the cause."""
        self.disconnects += times
        self.replacing = False
        cause = _natsio.last_error(self._nc)
        seen = f"{type(cause).__name__}: {cause}" if cause else "no cause reported"
        hint = "" if self.dead_at is not None else (
            "; if the server log says 'Slow Consumer Detected', lower max_bytes_in_flight")
        log.warning("the connection to NATS was lost and replaced (%s); reissuing the pull "
                    "requests of %s%s", seen, self._subject, hint)

    def arrived(self) -> None:
        """Messages arrive: after a dead connection, say that handling resumes."""
        if self.dead_at is not None:
            log.warning("handling resumes on %s: messages arrive again, %.1fs after the dead "
                        "connection was found", self._subject, time.monotonic() - self.dead_at)
            self.dead_at = None


async def consumer_missing(nc: Client, next_subject: str) -> bool:
    """True if the server says the consumer (or its stream) of ``next_subject`` (its
    ``MSG.NEXT`` subject) does not exist."""
    info = next_subject.replace(".CONSUMER.MSG.NEXT.", ".CONSUMER.INFO.", 1)
    try:
        reply = await nc.request(info, b"", timeout=2.0)
        error = json.loads(reply.data).get("error") or {}
    except Exception:  # JetStream not answering yet: it may come back
        return False
    return error.get("err_code") in (10014, 10059)  # consumer / stream not found
