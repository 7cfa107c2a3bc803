"""Reading dead letters: the :class:`DeadLetter` a stored copy parses into, the
:class:`Selection` that picks some of them, and :func:`read` over a dead-letter stream."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
from nats.js.errors import NotFoundError

from amebus.subjects import matches, validate_pattern

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["MARK", "REPLAYS", "DeadLetter", "Selection", "read", "replay_marks", "stream_of"]

REPLAYS = "Amebus-Replays"
"""Header counting how often a message was replayed out of the dead-letter stream."""
MARK = "Amebus-Replayed-Sequence"
"""Header of the replay mark: the dead-letter sequence that was replayed."""
_STAGES = ("pre-process", "business", "post-process")


@attrs.frozen
class DeadLetter:
    """One stored dead-letter copy (``docs/settlement.md`` lists its headers).

    Attributes:
        seq: its sequence in the dead-letter stream.
        subject: the dead-letter subject it is stored on.
        time: when the dead-letter stream stored it (UTC).
        data: the original payload.
        headers: every header of the copy.
        replayed_to: where a replay of it was stored (``"SUBJECT seq N"``), else None.
    """

    seq: int
    subject: str
    time: dt.datetime
    data: bytes
    headers: Mapping[str, str]
    replayed_to: str | None = None

    def _get(self, name: str) -> str:
        return self.headers.get(name, "")

    @property
    def original_subject(self) -> str:
        """The subject the message was first published to."""
        return self._get("Amebus-Original-Subject")

    @property
    def original_stream(self) -> str:
        return self._get("Amebus-Original-Stream")

    @property
    def original_sequence(self) -> int:
        return _int(self._get("Amebus-Original-Sequence"))

    @property
    def original_msg_id(self) -> str:
        """The original ``Nats-Msg-Id`` (both header spellings amebus has written)."""
        return (self._get("Amebus-Original-Nats-Msg-Id") or self._get("Amebus-Original-Msg-Id"))

    @property
    def deliveries(self) -> int:
        return _int(self._get("Amebus-Deliveries"))

    @property
    def stage(self) -> str:
        return self._get("Amebus-Stage")

    @property
    def route(self) -> str:
        return self._get("Amebus-Route")

    @property
    def error(self) -> str:
        return self._get("Amebus-Error")

    @property
    def replays(self) -> int:
        """How many times this message was replayed before it came back here."""
        return _int(self._get(REPLAYS))

    def age(self, now: dt.datetime | None = None) -> dt.timedelta:
        """Time since the copy was stored."""
        return (now or dt.datetime.now(dt.UTC)) - self.time


@attrs.frozen
class Selection:
    """Which dead letters a command works on; every given criterion must hold.

    Attributes:
        subject: a subject pattern the original subject must match (``orders.*``).
        route: the route name; stage: ``pre-process``, ``business`` or ``post-process``.
        error: text the error must contain (case-insensitive).
        since, until: stored at or after / before these times (timezone-aware).
        first_seq, last_seq: the dead-letter stream sequence range, inclusive.
        seqs: exactly these sequences.
    """

    subject: str | None = None
    route: str | None = None
    stage: str | None = attrs.field(default=None)
    error: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    first_seq: int = 1
    last_seq: int | None = None
    seqs: frozenset[int] | None = attrs.field(default=None, converter=attrs.converters.optional(
        frozenset))

    @stage.validator
    def _check_stage(self, _: object, value: str | None) -> None:
        if value is not None and value not in _STAGES:
            msg = f"stage {value!r} is not one of {', '.join(_STAGES)}"
            raise ValueError(msg)

    def __attrs_post_init__(self) -> None:
        if self.subject is not None:
            validate_pattern(self.subject)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                msg = f"{name} {value!r} has no timezone; give an aware datetime (UTC)"
                raise ValueError(msg)

    def start(self) -> int:
        """The first sequence worth reading."""
        return max(self.first_seq, min(self.seqs)) if self.seqs else self.first_seq

    def wants(self, letter: DeadLetter) -> bool:
        """True if ``letter`` meets every criterion."""
        if self.seqs is not None and letter.seq not in self.seqs:
            return False
        if letter.seq < self.first_seq or (self.last_seq is not None
                                           and letter.seq > self.last_seq):
            return False
        if self.subject is not None and not matches(validate_pattern(self.subject),
                                                    letter.original_subject.split(".")):
            return False
        if self.route is not None and letter.route != self.route:
            return False
        if self.stage is not None and letter.stage != self.stage:
            return False
        if self.error is not None and self.error.lower() not in letter.error.lower():
            return False
        if self.since is not None and letter.time < self.since:
            return False
        return self.until is None or letter.time < self.until


async def stream_of(js: JetStreamContext, dead_letter_subject: str) -> str:
    """The name of the stream that stores ``dead_letter_subject``."""
    try:
        return await js.find_stream_name_by_subject(dead_letter_subject)
    except NotFoundError:
        msg = (f"no stream stores the dead-letter subject {dead_letter_subject!r}; nothing "
               f"was dead-lettered there (create one: `nats stream add DEAD --subjects "
               f"'{dead_letter_subject}'`)")
        raise LookupError(msg) from None


async def read(js: JetStreamContext, stream: str, selection: Selection | None = None, *,
               subject: str = ">") -> list[DeadLetter]:
    """The dead letters of ``stream`` (on ``subject``) that ``selection`` picks, oldest first,
    each with where it was replayed to (if a replay mark says so).

    Messages without the ``Amebus-Dead-Letter`` header (other traffic, replay marks) are
    skipped. Reads one message per request (the stream's message-get API): no consumer is
    created, so this works with permissions that allow only reads, and leaves no state behind.
    """
    selection = selection or Selection()
    letters, marks = await _scan(js, stream, subject, selection.start())
    return [attrs.evolve(letter, replayed_to=marks.get(letter.seq, (None, 0))[0])
            for letter in letters if selection.wants(letter)]


async def replay_marks(js: JetStreamContext, stream: str, subject: str = ">",
                       start: int = 1) -> dict[int, tuple[str, int]]:
    """Replayed dead-letter sequence -> (where its replay went, the mark's own sequence)."""
    return (await _scan(js, stream, subject, start))[1]


async def _scan(js: JetStreamContext, stream: str, subject: str, start: int
                ) -> tuple[list[DeadLetter], dict[int, tuple[str, int]]]:
    letters: list[DeadLetter] = []
    marks: dict[int, tuple[str, int]] = {}  # a mark is always stored after its dead letter
    seq = max(start, 1)
    while True:
        try:
            # next=True with a subject: the first message at or after seq; the server skips
            # the gaps deleted messages leave (nats-py 2.16 get_msg, STREAM.MSG.GET).
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        seq = int(raw.seq or seq)
        headers = dict(raw.headers or {})
        if MARK in headers:
            marks[_int(headers[MARK])] = (headers.get("Amebus-Replayed-To", "?"), seq)
        elif headers.get("Amebus-Dead-Letter") == "1":
            letters.append(DeadLetter(
                seq=seq, subject=raw.subject or "", data=raw.data or b"", headers=headers,
                time=raw.time or dt.datetime.now(dt.UTC)))
        seq += 1
    return letters, marks


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        return 0
