"""Sending dead letters back (:func:`replay`) and removing them (:func:`purge`).

A replay restores the original headers from their ``Amebus-Original-*`` copies, publishes the
payload to ``Amebus-Original-Subject`` with a fresh ``Nats-Msg-Id`` (the original id would be
dropped as a duplicate inside the stream's window), counts itself in ``Amebus-Replays``, and
stores a replay mark beside the dead letter, so ``ls`` shows it and ``purge --replayed`` finds it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import attrs
from nats.js.errors import APIError, NoStreamResponseError

from amebus.deadletter import one_line
from amebus.dlq._read import MARK, REPLAYS, DeadLetter, Selection, read, replay_marks

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["Replayed", "purge", "replay", "restored_headers"]

# The headers of the dead-letter copy that describe the failure, not the message.
_FAILURE_HEADERS = frozenset({
    "Amebus-Dead-Letter", "Amebus-Original-Subject", "Amebus-Original-Stream",
    "Amebus-Original-Sequence", "Amebus-Deliveries", "Amebus-Stage", "Amebus-Route",
    "Amebus-Error", "Amebus-Original-Msg-Id", REPLAYS})
# Server control headers a replay may carry again; every other Nats-* header of the original
# is dropped: a replay must not roll up the subject (Nats-Rollup), fail on an expected last
# sequence long passed (Nats-Expected-Last-*), add to a counter again (Nats-Incr), schedule
# or batch (Nats-Schedule*, Nats-Batch-*), nor reuse the original id (Nats-Msg-Id).
_RESTORABLE = frozenset({"Nats-TTL", "Nats-Expected-Stream"})
_PREFIX = "Amebus-Original-"


@attrs.frozen
class Replayed:
    """What :func:`replay` did with one dead letter.

    Attributes:
        letter: the dead letter.
        outcome: ``"replayed"``, ``"would replay"`` (dry run), ``"refused"`` or ``"skipped"``.
        reason: why it was refused or skipped ("" when replayed).
        seq: the replay's sequence in the original stream (0 unless replayed).
    """

    letter: DeadLetter
    outcome: str
    reason: str = ""
    seq: int = 0


def restored_headers(letter: DeadLetter) -> dict[str, str]:
    """The headers a replay of ``letter`` is published with (without its new id)."""
    headers: dict[str, str] = {}
    for name, value in letter.headers.items():
        if name in _FAILURE_HEADERS or name.startswith("Nats-"):
            continue  # a Nats-* header on the copy itself is the server's or an old copy's
        if name.startswith(_PREFIX):
            original = name[len(_PREFIX):]
            if original == "Event-Type":
                headers["Amebus-Event-Type"] = value
            elif original in _RESTORABLE:
                headers[original] = value
            elif not original.startswith("Nats-"):
                headers[name] = value
            continue
        headers[name] = value
    headers[REPLAYS] = str(letter.replays + 1)
    return headers


def _refusal(letter: DeadLetter, max_replays: int) -> tuple[str, str] | None:
    if letter.replayed_to is not None:
        return "skipped", (f"already replayed (to {letter.replayed_to}); purge it with "
                           f"`purge --replayed`, or force a second replay")
    if max_replays >= 0 and letter.replays >= max_replays:
        return "refused", (f"it was replayed {letter.replays} time(s) already and came back "
                           f"each time (limit {max_replays}); fix the handler, then force it")
    return None


async def replay(js: JetStreamContext, stream: str, selection: Selection | None = None, *,
                 subject: str = ">", max_replays: int = 3, force: bool = False,
                 dry_run: bool = False, limit: int | None = None) -> list[Replayed]:
    """Replay the dead letters of ``stream`` that ``selection`` picks, oldest first.

    Args:
        max_replays: refuse a message replayed this many times already (-1: no limit).
        force: replay what would be refused or skipped (already replayed) anyway.
        dry_run: publish nothing; report what would be replayed.
        limit: replay at most this many (refusals do not count).
    """
    done: list[Replayed] = []
    count = 0
    for letter in await read(js, stream, selection, subject=subject):
        refusal = None if force else _refusal(letter, max_replays)
        if refusal is None and not letter.original_subject:
            refusal = "refused", "it has no Amebus-Original-Subject header: nowhere to send it"
        if refusal is not None:
            done.append(Replayed(letter, *refusal))
            continue
        if limit is not None and count >= limit:
            break
        count += 1
        if dry_run:
            done.append(Replayed(letter, "would replay"))
            continue
        done.append(await _replay_one(js, stream, letter, fresh=force))
    return done


async def _replay_one(js: JetStreamContext, stream: str, letter: DeadLetter, *,
                      fresh: bool) -> Replayed:
    headers = restored_headers(letter)
    # Stable per dead letter, so running replay twice inside the duplicate window stores one
    # replay; a forced replay is a new one on purpose.
    headers["Nats-Msg-Id"] = f"amebus-replay:{stream}:{letter.seq}" + (
        f":{uuid.uuid4().hex}" if fresh else "")
    try:
        ack = await js.publish(letter.original_subject, letter.data, headers=headers)
    except NoStreamResponseError:
        return Replayed(letter, "refused", f"no stream stores {letter.original_subject!r}")
    except APIError as exc:
        return Replayed(letter, "refused", f"the server refused it: {exc.description}")
    except Exception as exc:
        return Replayed(letter, "refused", f"publishing failed: {one_line(exc)}")
    if ack.duplicate:
        return Replayed(letter, "skipped", "a replay of it is already stored (duplicate id)")
    await js.publish(letter.subject, b"", headers=_mark(letter, ack.stream, ack.seq))
    return Replayed(letter, "replayed", seq=ack.seq)


def _mark(letter: DeadLetter, stream: str, seq: int) -> dict[str, str]:
    return {MARK: str(letter.seq),
            "Amebus-Replayed-To": f"{letter.original_subject} seq {seq} in {stream}"}


async def purge(js: JetStreamContext, stream: str, selection: Selection | None = None, *,
                replayed: bool = False, subject: str = ">", dry_run: bool = False
                ) -> list[DeadLetter]:
    """Delete the dead letters ``selection`` picks (only the replayed ones, if ``replayed``),
    with their replay marks; returns the dead letters deleted (or, dry run, to delete)."""
    letters = await read(js, stream, selection, subject=subject)
    if replayed:
        letters = [letter for letter in letters if letter.replayed_to is not None]
    if dry_run or not letters:
        return letters
    marks = await replay_marks(js, stream, subject, start=letters[0].seq)
    for letter in letters:
        await js.delete_msg(stream, letter.seq)
        if letter.seq in marks:
            await js.delete_msg(stream, marks[letter.seq][1])
    return letters
