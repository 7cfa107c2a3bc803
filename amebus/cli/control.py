"""``amebus pause | resume | reset | unpin module:Service``: stop, restart or move a service's
durable consumer on the server, for every process serving it at once (``unpin``: hand a
standby service's pin to another instance)."""

from __future__ import annotations

import argparse
import datetime as dt
from typing import TYPE_CHECKING, Any

from amebus import control, priority
from amebus.cli.load import USAGE, CommandError, service_class
from amebus.cli.ops import parse_time, with_jetstream
from amebus.cli.plan import add_target

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["add_parsers", "run"]


def add_parsers(sub: Any, conn: argparse.ArgumentParser) -> None:
    """Add ``pause``, ``resume``, ``reset`` and ``unpin`` to the ``amebus`` subparsers."""
    pause = sub.add_parser("pause", parents=[conn], help="stop deliveries to a service's "
                           "durable (nats-server 2.11+)", description="Pause the durable "
                           "consumer: no process serving it gets messages until the deadline "
                           "or `amebus resume`.")
    add_target(pause)
    pause.add_argument("--until", metavar="TIME", help="resume by itself at TIME (ISO time, "
                       "or a span from now: 90s, 15m, 2h; default: until resumed)")
    resume = sub.add_parser("resume", parents=[conn], help="resume a paused durable")
    add_target(resume)
    reset = sub.add_parser("reset", parents=[conn], help="deliver again from a sequence or "
                           "a time (nats-server 2.14+)", description="Reset the durable "
                           "consumer's delivery state: messages from the given point on are "
                           "delivered again, acked or not; those before it count as settled.")
    add_target(reset)
    where = reset.add_mutually_exclusive_group(required=True)
    where.add_argument("--to-seq", type=int, metavar="N", help="from stream sequence N")
    where.add_argument("--to-time", metavar="TIME", help="from the first message stored at "
                       "or after TIME (ISO time, or a span before now: 15m, 2h)")
    unpin = sub.add_parser("unpin", parents=[conn], help="move a standby service's pin to "
                           "another instance (nats-server 2.11+)", description="Clear the "
                           "pinned instance of a standby service's durable: the server pins "
                           "one of the instances pulling (possibly the same one again).")
    add_target(unpin)


def _stamp(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


async def _control(js: JetStreamContext, args: argparse.Namespace) -> int:
    cls = service_class(args.target)
    where: dict[str, Any] = {"stream": args.stream, "durable": args.durable}
    stream, durable = control.names(cls, args.stream, args.durable)
    if args.command == "pause":
        until = parse_time(args.until, ahead=True, flag="--until") if args.until else None
        state = await control.pause(js, cls, until, **where)
        if state.until is None or state.until >= control.FOREVER - dt.timedelta(days=1):
            print(f"paused {stream} > {durable} until resumed (`amebus resume "
                  f"{args.target}`)")
        else:
            left = (state.until - dt.datetime.now(dt.UTC)).total_seconds()
            print(f"paused {stream} > {durable} until {_stamp(state.until)} "
                  f"({max(left, 0):.0f}s from now)")
        return 0
    if args.command == "unpin":
        pinned = await priority.unpin(js, stream, durable)
        print(f"unpinned {stream} > {durable} (pin {pinned})" if pinned else
              f"{stream} > {durable} had no pinned instance; the next pull is pinned")
        return 0
    if args.command == "resume":
        await control.resume(js, cls, **where)
        print(f"resumed {stream} > {durable}")
        return 0
    if args.to_seq is not None and args.to_seq < 1:
        msg = f"--to-seq {args.to_seq} is not a stream sequence; give 1 or more"
        raise CommandError(msg, USAGE)
    time = parse_time(args.to_time, ahead=False, flag="--to-time") if args.to_time else None
    state = await control.reset(js, cls, seq=args.to_seq, time=time, **where)
    print(f"reset {stream} > {durable}: delivering again from stream sequence "
          f"{state.reset_seq}")
    return 0


async def run(args: argparse.Namespace) -> int:
    """Run ``amebus pause``, ``resume``, ``reset`` or ``unpin``."""
    return await with_jetstream(args, f"amebus {args.command}", lambda js: _control(js, args))
