"""Handler attempts per message, counted durably in a NATS key-value bucket.

The server counts deliveries, including those amebus gave back unstarted (shutdown, a
rolling restart) and those lost with a crashed process. amebus counts handler *attempts*
itself, keyed by stream sequence, where it costs nothing on the happy path: a first delivery
reads and writes nothing. A failure that naks writes the attempt number; a redelivery reads
it and writes the next number *before* the handler runs (so a crash is counted); a final ack
or term deletes it. A redelivery with no entry was never started: it is attempt 1.

nats-py's key-value API is used as is (``js.create_key_value``/``key_value``): one bucket,
``amebus_attempts``, shared by every durable (keys ``<stream>.<durable>.<sequence>``), one
value per key, entries older than seven days dropped (a message retried longer than that
starts counting again). Create the bucket yourself beforehand to choose replicas.

If the bucket cannot be used, amebus falls back to the server's delivery count (the
behaviour before attempts were counted) and logs a WARNING once per outage.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from nats.js.api import StorageType
from nats.js.errors import BucketNotFoundError, NotFoundError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext
    from nats.js.kv import KeyValue

__all__ = ["BUCKET", "Attempts", "key_token", "open_attempts"]

log = logging.getLogger(__name__)

BUCKET = "amebus_attempts"
MAX_AGE = 7 * 24 * 3600.0


def key_token(name: str) -> str:
    """``name`` as one key token: ASCII letters, digits, ``-`` and ``_`` kept, others ``=hex``.

    The permissions grant (``amebus.permissions``) names the same keys, so it uses this too.
    """
    return "".join(c if c.isascii() and (c.isalnum() or c in "-_") else f"={ord(c):x}="
                   for c in name)


class Attempts:
    """The attempt counts of one durable (``kv`` None: unavailable, always fall back)."""

    def __init__(self, kv: KeyValue | None, stream: str, durable: str) -> None:
        self._kv = kv
        self._prefix = f"{key_token(stream)}.{key_token(durable)}."
        self._down = kv is None

    def _failed(self, what: str, exc: BaseException) -> None:
        if not self._down:
            self._down = True
            log.warning("the attempt bucket %s could not %s (%r); counting attempts by the "
                        "server's deliveries until it answers again (docs/settlement.md)",
                        BUCKET, what, exc)

    async def read(self, seq: int) -> int | None:
        """Attempts recorded for stream sequence ``seq`` (0: none); None if unavailable."""
        if self._kv is None:
            return None
        try:
            entry = await self._kv.get(self._prefix + str(seq))
        except NotFoundError:  # never written, or deleted
            self._down = False
            return 0
        except Exception as exc:
            self._failed("be read", exc)
            return None
        self._down = False
        try:
            return int(entry.value or b"0")
        except ValueError:
            return 0

    async def write(self, seq: int, attempts: int) -> bool:
        """Record ``attempts`` for ``seq`` (deletes the entry for 0); False if unavailable."""
        if self._kv is None:
            return False
        try:
            if attempts > 0:
                await self._kv.put(self._prefix + str(seq), str(attempts).encode())
            else:
                await self._kv.delete(self._prefix + str(seq))
        except Exception as exc:
            self._failed("be written", exc)
            return False
        self._down = False
        return True

    async def forget(self, seq: int) -> None:
        """Delete the entry of ``seq`` (its message is settled for good)."""
        await self.write(seq, 0)


async def open_attempts(js: JetStreamContext, stream: str, durable: str) -> Attempts:
    """The attempt store of ``stream``/``durable``, creating the bucket when missing."""
    kv: KeyValue | None
    try:
        try:
            kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            kv = await js.create_key_value(bucket=BUCKET, history=1, ttl=MAX_AGE, direct=True,
                                           storage=StorageType.FILE,
                                           description="amebus handler attempts per message")
    except Exception as exc:
        log.warning("could not open or create the attempt bucket %s (%r); attempts are "
                    "counted by the server's deliveries (docs/settlement.md)", BUCKET, exc)
        kv = None
    return Attempts(kv, stream, durable)
