"""``amebus dlq ls | show | replay | purge``: dead letters from the command line.

The dead-letter stream is found from a service's ``dead_letter_subject`` (``amebus dlq ls
module:Service``) or named with ``--stream`` (and ``--subject`` to read only some of it).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from amebus import dlq
from amebus.cli.load import USAGE, CommandError, service_class
from amebus.cli.ops import format_age, parse_time, with_jetstream

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add ``dlq`` and its subcommands to the ``amebus`` subparsers ``sub``."""
    where = argparse.ArgumentParser(add_help=False)
    group = where.add_argument_group("dead-letter stream")
    group.add_argument("target", nargs="?", metavar="module.path:ServiceClass",
                       help="the service whose dead_letter_subject to read")
    group.add_argument("--stream", help="the dead-letter stream (default: the one storing "
                       "the service's dead_letter_subject)")
    group.add_argument("--subject", help="read only this subject (pattern) of the stream")
    pick = argparse.ArgumentParser(add_help=False)
    group = pick.add_argument_group("selection")
    group.add_argument("--original", metavar="PATTERN",
                       help="original subject matches PATTERN (orders.*)")
    group.add_argument("--route", help="failed in this route")
    group.add_argument("--stage", choices=["pre-process", "business", "post-process"])
    group.add_argument("--error", metavar="TEXT", help="the error contains TEXT")
    group.add_argument("--since", metavar="TIME", help="dead-lettered at or after TIME "
                       "(ISO time, or a span before now: 90s, 15m, 2h, 1d)")
    group.add_argument("--until", metavar="TIME", help="dead-lettered before TIME")
    group.add_argument("--from-seq", type=int, default=1, metavar="N")
    group.add_argument("--to-seq", type=int, metavar="N")
    group.add_argument("--seq", type=int, action="append", metavar="N",
                       help="exactly this sequence (repeatable)")
    dlq_parser = sub.add_parser("dlq", help="list, show, replay or purge dead letters",
                                description="Work with the dead-letter stream.")
    cmds = dlq_parser.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    ls = cmds.add_parser("ls", parents=[conn, where, pick], help="list dead letters")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    show = cmds.add_parser("show", parents=[conn, where], help="print one dead letter")
    show.add_argument("seq", type=int, help="its dead-letter stream sequence")
    show.add_argument("--json", action="store_true")
    replay = cmds.add_parser("replay", parents=[conn, where, pick],
                             help="publish dead letters back to their original subjects")
    replay.add_argument("--dry-run", action="store_true", help="publish nothing; list them")
    replay.add_argument("--max", type=int, metavar="N", help="replay at most N")
    replay.add_argument("--max-replays", type=int, default=3, metavar="N",
                        help="refuse a message replayed N times already (3; -1: no limit)")
    replay.add_argument("--force", action="store_true",
                        help="replay refused and already-replayed messages too")
    purge = cmds.add_parser("purge", parents=[conn, where, pick], help="delete dead letters")
    purge.add_argument("--replayed", action="store_true", help="only those replayed")
    purge.add_argument("--all", action="store_true", help="every dead letter (no selection)")
    purge.add_argument("--dry-run", action="store_true", help="delete nothing; list them")


def _selection(args: argparse.Namespace) -> dlq.Selection:
    try:
        return dlq.Selection(
            subject=args.original, route=args.route, stage=args.stage, error=args.error,
            since=parse_time(args.since, ahead=False, flag="--since") if args.since else None,
            until=parse_time(args.until, ahead=False, flag="--until") if args.until else None,
            first_seq=args.from_seq, last_seq=args.to_seq, seqs=args.seq)
    except (ValueError, TypeError) as exc:
        raise CommandError(str(exc), USAGE) from None


def _selected(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in
               ("original", "route", "stage", "error", "since", "until", "to_seq", "seq")
               ) or args.from_seq != 1


async def _where(js: JetStreamContext, args: argparse.Namespace) -> tuple[str, str]:
    subject = args.subject
    if args.target is not None:
        cls = service_class(args.target)
        if not cls.dead_letter_subject and not (args.stream and subject):
            msg = (f"{cls.__name__} has no dead_letter_subject; set it, or name the stream "
                   f"with --stream")
            raise CommandError(msg, USAGE)
        subject = subject or cls.dead_letter_subject
    if args.stream:
        return args.stream, subject or ">"
    if subject is None:
        msg = "name the dead letters: give module.path:ServiceClass or --stream NAME"
        raise CommandError(msg, USAGE)
    return await dlq.stream_of(js, subject), subject


def _row(letter: dlq.DeadLetter) -> dict[str, Any]:
    return {"seq": letter.seq, "subject": letter.subject,
            "original_subject": letter.original_subject, "stage": letter.stage,
            "route": letter.route, "error": letter.error, "deliveries": letter.deliveries,
            "replays": letter.replays, "replayed_to": letter.replayed_to,
            "time": letter.time.isoformat(), "age_seconds": int(letter.age().total_seconds())}


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip())


async def _ls(js: JetStreamContext, args: argparse.Namespace) -> int:
    stream, subject = await _where(js, args)
    letters = await dlq.read(js, stream, _selection(args), subject=subject)
    if args.json:
        for letter in letters:
            print(json.dumps(_row(letter)))
        return 0
    if not letters:
        print(f"no dead letters in {stream} on {subject} match")
        return 0
    rows: list[tuple[str, ...]] = [("SEQ", "AGE", "SUBJECT", "ORIGINAL", "STAGE", "ROUTE",
                                     "DELIV", "REPLAYS", "ERROR")]
    for letter in letters:
        replays = str(letter.replays) + (" +replayed" if letter.replayed_to else "")
        rows.append((str(letter.seq), format_age(letter.age()), letter.subject,
                     letter.original_subject, letter.stage, letter.route or "-",
                     str(letter.deliveries), replays, letter.error[:80]))
    _table(rows)
    print(f"{len(letters)} dead letter(s) in stream {stream}")
    return 0


async def _show(js: JetStreamContext, args: argparse.Namespace) -> int:
    stream, subject = await _where(js, args)
    found = await dlq.read(js, stream, dlq.Selection(seqs=[args.seq], first_seq=args.seq,
                                                     last_seq=args.seq), subject=subject)
    if not found:
        msg = f"no dead letter at sequence {args.seq} in stream {stream}"
        raise CommandError(msg)
    letter = found[0]
    try:
        payload = letter.data.decode()
    except UnicodeDecodeError:
        payload = repr(letter.data)
    if args.json:
        print(json.dumps({**_row(letter), "headers": dict(letter.headers), "payload": payload}))
        return 0
    print(f"dead letter {letter.seq} in {stream} on {letter.subject}, stored "
          f"{letter.time.isoformat(timespec='seconds')} ({format_age(letter.age())} ago)")
    if letter.replayed_to:
        print(f"replayed to {letter.replayed_to}")
    for name, value in letter.headers.items():
        print(f"  {name}: {value}")
    print(f"payload ({len(letter.data)} bytes):")
    print(payload)
    return 0


async def _replay(js: JetStreamContext, args: argparse.Namespace) -> int:
    stream, subject = await _where(js, args)
    results = await dlq.replay(js, stream, _selection(args), subject=subject,
                               max_replays=args.max_replays, force=args.force,
                               dry_run=args.dry_run, limit=args.max)
    for item in results:
        letter = item.letter
        where = f"seq {item.seq}" if item.seq else ""
        reason = f": {item.reason}" if item.reason else ""
        print(f"{item.outcome} {letter.seq} -> {letter.original_subject} {where}".rstrip()
              + reason)
    counts = {o: sum(1 for i in results if i.outcome == o) for o in
              ("replayed", "would replay", "refused", "skipped")}
    print(", ".join(f"{n} {o}" for o, n in counts.items() if n) or "nothing to replay")
    return 1 if counts["refused"] else 0


async def _purge(js: JetStreamContext, args: argparse.Namespace) -> int:
    if not (_selected(args) or args.replayed or args.all):
        msg = "purge deletes what a selection picks: give --replayed, a selection, or --all"
        raise CommandError(msg, USAGE)
    stream, subject = await _where(js, args)
    letters = await dlq.purge(js, stream, _selection(args), replayed=args.replayed,
                              subject=subject, dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    seqs = ", ".join(str(letter.seq) for letter in letters)
    print(f"{verb} {len(letters)} dead letter(s) from {stream}" + (f": {seqs}" if seqs else ""))
    return 0


async def run(args: argparse.Namespace) -> int:
    """Run ``amebus dlq ACTION``; the exit code (1 if a replay was refused)."""
    action = {"ls": _ls, "show": _show, "replay": _replay, "purge": _purge}[args.dlq_command]
    return await with_jetstream(args, "amebus dlq", lambda js: action(js, args))
