"""The exceptions amebus raises, and the two signals a handler may raise.

Exception tree::

    AmebusError
    ├── SubjectError (ValueError)        a subject, pattern or token breaks the grammar
    ├── ConfigurationError (TypeError)   a declaration is wrong; raised at class creation
    ├── DecodeError (ValueError)         a payload does not decode into the handler's event
    ├── NoRouteError (LookupError)       a message's subject resolves to no route
    ├── HandlerTimeoutError (TimeoutError)  a handler ran past its timeout and was cancelled
    ├── AttemptsExhaustedError (RuntimeError)  a redelivery whose handler already ran out of
    │                                    attempts (failed or crashed max_deliver times)
    └── PublishError                     the server did not store a published event
        ├── NoStreamError                no stream listens on the subject
        ├── SequenceConflictError        an expected_* sequence did not match (optimistic lock)
        ├── StreamSettingError           the stream does not allow TTL/atomic/schedules
        └── BatchPublishError            some events of a publish_many() batch were not stored

Flow-control signals are not errors and stand outside the tree: a handler raises
``Nak(delay=...)`` to ask for redelivery and ``Term(reason=...)`` to drop a message for good.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.js.api import PubAck

__all__ = [
    "MAX_DELAY",
    "AmebusError",
    "AttemptsExhaustedError",
    "BatchPublishError",
    "ConfigurationError",
    "DecodeError",
    "HandlerTimeoutError",
    "Nak",
    "NoRouteError",
    "NoStreamError",
    "PublishError",
    "SequenceConflictError",
    "StreamSettingError",
    "SubjectError",
    "Term",
    "check_delay",
]


class AmebusError(Exception):
    """Base of every error amebus raises."""


class SubjectError(AmebusError, ValueError):
    """A subject, pattern or token is not valid NATS subject syntax."""


class ConfigurationError(AmebusError, TypeError):
    """A Service, Route, Router or Event is declared wrongly."""


class DecodeError(AmebusError, ValueError):
    """A payload could not be decoded into the expected event class.

    Attributes:
        errors: readable failures, one per path (``required field missing @ $.order_id``).
        size: the payload size in bytes.
        target: the class the payload was decoded into.
    """

    def __init__(self, message: str, *, errors: Sequence[str] = (), size: int = 0,
                 target: type[Any] | None = None) -> None:
        super().__init__(message)
        self.errors = tuple(errors)
        self.size = size
        self.target = target


class NoRouteError(AmebusError, LookupError):
    """A message arrived on a subject that no route of the service handles."""


class HandlerTimeoutError(AmebusError, TimeoutError):
    """A handler ran past its timeout and was cancelled."""


class AttemptsExhaustedError(AmebusError, RuntimeError):
    """A redelivered message whose handler already failed or crashed ``max_deliver`` times."""


class PublishError(AmebusError):
    """The server did not acknowledge a publish.

    Attributes:
        subject: the subject that was published to.
    """

    def __init__(self, message: str, *, subject: str = "") -> None:
        super().__init__(message)
        self.subject = subject


class NoStreamError(PublishError):
    """No JetStream stream captures the subject that was published to."""


class SequenceConflictError(PublishError):
    """An ``expected_last_subject_sequence`` (or ``expected_last_sequence``) did not match:
    another writer stored a message first. Nothing was stored.

    Attributes:
        actual: the last sequence the server reported, or ``None`` when it did not say
            (inside an atomic batch it does not).
    """

    def __init__(self, message: str, *, subject: str = "", actual: int | None = None) -> None:
        super().__init__(message, subject=subject)
        self.actual = actual


class StreamSettingError(PublishError):
    """The stream does not allow what the publish asked for; nothing was stored.

    Attributes:
        setting: the ``StreamConfig`` field to set, e.g. ``"allow_msg_ttl"``.
    """

    def __init__(self, message: str, *, subject: str = "", setting: str = "") -> None:
        super().__init__(message, subject=subject)
        self.setting = setting


class BatchPublishError(PublishError):
    """Some events of a ``publish_many()`` batch were not stored; the others were.

    Attributes:
        acks: one entry per event, in order: its ``PubAck``, or ``None`` if it was not stored.
        failures: the index of each event not stored, mapped to the error saying why
            (a ``NoStreamError`` or a ``PublishError``, whose ``subject`` is the event's).
        subject: the subject of the first event not stored.
    """

    def __init__(self, message: str, *, acks: Sequence[PubAck | None],
                 failures: Mapping[int, PublishError]) -> None:
        first = failures[min(failures)].subject if failures else ""
        super().__init__(message, subject=first)
        self.acks = list(acks)
        self.failures = dict(failures)


MAX_DELAY = 9_223_372_036.0
"""The longest nak delay in seconds (about 292 years): the server reads a nak's delay as
int64 nanoseconds, and a longer one would overflow it and redeliver at once."""


def check_delay(delay: object) -> float:
    """``delay`` as float seconds if it is a valid nak delay (a finite number from 0 to
    ``MAX_DELAY``), else TypeError or ValueError saying what to give."""
    fix = f"give seconds from 0 to {MAX_DELAY:.0f} as a number, like 5.0"
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        msg = f"the nak delay is {delay!r} ({type(delay).__name__}); {fix}"
        raise TypeError(msg)
    if not 0 <= delay <= MAX_DELAY:  # NaN fails both comparisons
        msg = f"the nak delay is {delay!r}; {fix}"
        raise ValueError(msg)
    return float(delay)


class Nak(Exception):
    """Raised by a handler to ask the server to redeliver the message after ``delay`` seconds.

    ``delay=None`` uses the service's retry backoff for this delivery; ``delay=0`` redelivers
    at once. A delay that is not a finite number from 0 to ``MAX_DELAY`` raises TypeError or
    ValueError here, where the handler raises it (and so fails as an ordinary exception).
    """

    def __init__(self, delay: float | None = None) -> None:
        super().__init__(delay)
        self.delay = None if delay is None else check_delay(delay)

    def __str__(self) -> str:
        after = "the retry backoff" if self.delay is None else f"{self.delay:g}s"
        return f"the handler asked for redelivery after {after}"


class Term(Exception):
    """Raised by a handler to stop redelivery of the message for good, with a reason."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
