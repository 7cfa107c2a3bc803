"""Batch routes: ``Route(OrderPaid, batch=Batch(size=100, wait=0.5))`` hands its handler a list.

Declared with :class:`Batch` (checked when the Route is made), bound as a :class:`BatchCall`
(:mod:`amebus.dispatch`), its result read by :func:`outcomes_of`; served by
:mod:`amebus.batch_runner` (``docs/batches.md``).
"""

from __future__ import annotations

import inspect
import logging
import reprlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeAlias

import attrs

from amebus.errors import ConfigurationError, Nak, Term

if TYPE_CHECKING:
    from nats.aio.msg import Msg

__all__ = ["Batch", "BatchCall", "Outcome", "check_batch", "check_sizes", "outcomes_of",
           "pull_batch"]

log = logging.getLogger(__name__)

Outcome: TypeAlias = "Nak | Term | None"
"""One message's outcome in a batch handler's result: ``None`` (ack), ``Nak``, ``Term``."""


def _size(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        msg = (f"{where} size={value!r}: give the most messages a batch holds as a whole "
               f"number from 1 (like 100)")
        raise ConfigurationError(msg)
    return value


def _wait(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value < float("inf")):
        msg = (f"{where} wait={value!r}: give the longest seconds a message waits for its "
               f"batch as a number above 0 (finite, like 0.5)")
        raise ConfigurationError(msg)
    return float(value)


@attrs.frozen
class Batch:
    """How a batch route collects messages: at most ``size`` a run, and a message waits at most
    ``wait`` seconds for its batch to fill (then the batch runs with what it has).

    Attributes:
        size: the most messages one handler call receives (100).
        wait: the longest seconds the oldest message of a batch waits before it runs (0.5).

    Raises:
        ConfigurationError: ``size`` is not a whole number from 1, or ``wait`` not a finite
            number of seconds above 0.
    """

    size: int = 100
    wait: float = 0.5

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "size", _size(self.size, "Batch(...)"))
        object.__setattr__(self, "wait", _wait(self.wait, "Batch(...)"))


def check_batch(value: object, where: str) -> Batch | None:
    """``value`` as a :class:`Batch`: a Batch, a whole number (the size, waiting the default
    0.5s), or None (not a batch route); ``where`` starts the error."""
    if value is None or isinstance(value, Batch):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return Batch(size=_size(value, f"{where} batch"))
    fix = "Batch(size=100, wait=0.5)"
    if isinstance(value, tuple) and len(value) == 2:
        fix = f"Batch(size={value[0]!r}, wait={value[1]!r})"
    msg = (f"{where} batch={value!r}: give {fix} (the most messages, the longest wait in "
           f"seconds), or a whole number of messages (batch=100 waits up to 0.5s)")
    raise ConfigurationError(msg)


def outcomes_of(result: object, count: int, name: str) -> list[Outcome]:
    """A batch handler's ``result`` as one outcome per message (``None``: all acked).

    Raises:
        TypeError: the result is not None or a list (or tuple) of None, Nak and Term.
        ValueError: it holds more or fewer outcomes than the handler got messages.
    """
    fix = ("return None (all acked) or a list with one outcome per message, in the order "
           "given: None (ack), Nak(delay=...) or Term(reason)")
    if result is None:
        return [None] * count
    if not isinstance(result, list | tuple):
        msg = f"batch handler {name} returned {reprlib.repr(result)}; {fix}"
        raise TypeError(msg)
    if len(result) != count:
        msg = (f"batch handler {name} returned {len(result)} outcome(s) for {count} "
               f"message(s); {fix}")
        raise ValueError(msg)
    for index, outcome in enumerate(result):
        if outcome is not None and not isinstance(outcome, Nak | Term):
            msg = (f"batch handler {name} returned {reprlib.repr(outcome)} as outcome {index}; "
                   f"{fix}")
            raise TypeError(msg)
    return list(result)


class BatchCall:
    """A batch route's handler bound to its service: ``decode(msg)`` is what one list item
    receives, ``run(items)`` calls the handler with the list (sync or async)."""

    __slots__ = ("batch", "call", "decode", "name")

    def __init__(self, batch: Batch, call: Callable[[list[Any]], Any],
                 decode: Callable[[Msg], Any], name: str) -> None:
        self.batch, self.call, self.decode, self.name = batch, call, decode, name

    async def run(self, items: list[Any]) -> Any:
        """Call the handler with ``items``; return what it returned."""
        result = self.call(items)
        return await result if inspect.isawaitable(result) else result

    async def run_one(self, msg: Msg) -> None:
        """Run ``msg`` as a batch of one (the route's ``run``, outside a served consumer):
        its outcome is raised (``Nak``, ``Term``) as a per-message handler would raise it."""
        (outcome,) = outcomes_of(await self.run([self.decode(msg)]), 1, self.name)
        if outcome is not None:
            raise outcome


def check_sizes(owner: str, batches: Iterable[Batch | None], max_ack_pending: object) -> int:
    """The largest batch size of a service's routes (0: none batches).

    Raises:
        ConfigurationError: ``max_ack_pending`` is below that size.
    """
    size = max((b.size for b in batches if b is not None), default=0)
    if isinstance(max_ack_pending, int) and 0 < max_ack_pending < size:
        msg = (f"{owner}: a route's batch size is {size} but max_ack_pending={max_ack_pending}: "
               f"the server never hands out that many unsettled messages, so the batch could "
               f"never fill; raise max_ack_pending to at least {2 * size} or lower the size")
        raise ConfigurationError(msg)
    return size


def pull_batch(owner: str, batches: Iterable[Batch | None], batch: int,
               max_ack_pending: int) -> int:
    """The pull batch for a service whose routes batch as ``batches``: at least twice the
    largest size (one batch runs while the next fills), within ``max_ack_pending``.

    Raises:
        ConfigurationError: ``max_ack_pending`` is below a route's batch size.
    """
    size = check_sizes(owner, batches, max_ack_pending)
    if not size:
        return batch
    floor = 2 * size if max_ack_pending <= 0 else min(2 * size, max_ack_pending)
    if batch < floor:
        log.info("%s: pull batch raised from %d to %d for batch routes of size %d", owner,
                 batch, floor, size)
    return max(batch, floor)
