"""Dead letters as an API: list them, look at one, replay them, purge them.

    letters = await amebus.dlq.read(js, "DEAD", Selection(subject="orders.>"))
    results = await amebus.dlq.replay(js, "DEAD", Selection(route="paid"), max_replays=3)
    await amebus.dlq.purge(js, "DEAD", replayed=True)

The ``amebus dlq`` command (``ls``, ``show``, ``replay``, ``purge``) is built on these.
"""

from __future__ import annotations

from amebus.dlq._read import MARK, REPLAYS, DeadLetter, Selection, read, replay_marks, stream_of
from amebus.dlq._replay import Replayed, purge, replay, restored_headers

__all__ = ["MARK", "REPLAYS", "DeadLetter", "Replayed", "Selection", "purge", "read", "replay",
           "replay_marks", "restored_headers", "stream_of"]
