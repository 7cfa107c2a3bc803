"""What the operator commands (``dlq``, ``plan``, ``pause``, ...) share: running a coroutine
on a JetStream connection with one-sentence errors, and reading times from the command line.
"""

from __future__ import annotations

import argparse
import datetime as dt
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from amebus.cli.connect import close, connect, jetstream_error, server_url
from amebus.cli.load import USAGE, CommandError
from amebus.errors import AmebusError

if TYPE_CHECKING:
    from nats.js.client import JetStreamContext

__all__ = ["format_age", "parse_time", "with_jetstream"]

_SPAN = re.compile(r"^(\d+(?:\.\d+)?)(s|m|h|d)$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400}


async def with_jetstream(args: argparse.Namespace, name: str,
                         run: Callable[[JetStreamContext], Awaitable[int]]) -> int:
    """Connect as ``--server`` / ``$NATS_URL`` says, ``run(js)``, close; errors as sentences."""
    from nats.js.errors import APIError

    url = server_url(args)
    if url is None:
        msg = f"{args.command} needs a server: pass --server URL or set NATS_URL"
        raise CommandError(msg, USAGE)
    nc = await connect(url, args, name=name)
    try:
        return await run(nc.jetstream())
    except (AmebusError, LookupError) as exc:
        raise CommandError(str(exc).strip("'\"")) from None
    except APIError as exc:
        msg = f"the server refused: {exc.description} (err_code {exc.err_code})"
        raise CommandError(msg) from None
    except Exception as exc:
        raise jetstream_error(exc, url) or exc from None
    finally:
        await close(nc)


def parse_time(text: str, *, ahead: bool, flag: str,
               now: dt.datetime | None = None) -> dt.datetime:
    """``2026-12-04T03:00:00Z`` (an ISO time; UTC if it has no zone) or a span (``90s``,
    ``15m``, ``2h``, ``1d``) before now (``ahead=False``) or after now (``ahead=True``)."""
    now = now or dt.datetime.now(dt.UTC)
    span = _SPAN.match(text.strip())
    if span:
        delta = dt.timedelta(seconds=float(span.group(1)) * _UNIT[span.group(2)])
        return now + delta if ahead else now - delta
    try:
        when = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        msg = (f"{flag} {text!r} is not a time; write an ISO time (2026-12-04T03:00:00Z) or a "
               f"span such as 90s, 15m, 2h, 1d")
        raise CommandError(msg, USAGE) from None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def format_age(age: dt.timedelta) -> str:
    """``42s``, ``3m``, ``5h``, ``2d``: one unit, rounded down."""
    seconds = max(int(age.total_seconds()), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
