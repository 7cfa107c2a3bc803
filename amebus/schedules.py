"""Delayed and recurring events through the server's message schedules (ADR-51,
nats-server >= 2.12; cron time zones >= 2.14).

A schedule is a message of its own, stored on a *schedule subject* in the same stream as its
target; the server publishes its payload and headers to the target when it fires (an ``@at``
schedule is then removed, a recurring one stays). The stream needs ``allow_msg_schedules``.
One schedule per subject: a new one on the same subject replaces it.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from nats.js.api import Header

from amebus.subjects import validate_literal
from amebus.wire import rfc3339, ttl_header

__all__ = ["SCHEDULE_PREFIX", "schedule_subject_for", "scheduled"]

SCHEDULE_PREFIX = "amebus.schedule"
"""Schedule subjects default to ``amebus.schedule.<target>.<id>``: outside the consumers'
subject filters (``orders.>`` does not see them), so the stream holding ``orders.>`` needs
``amebus.schedule.orders.>`` among its subjects too."""

_CRON_FIELDS = 6  # second minute hour day-of-month month day-of-week
_TOKEN = re.compile(r"^[A-Za-z0-9_-]+$")


def schedule_subject_for(target: str, schedule_id: str) -> str:
    """The default schedule subject of ``target``."""
    return f"{SCHEDULE_PREFIX}.{target}.{schedule_id}"


def _every(every: float | timedelta) -> str:
    seconds = every.total_seconds() if isinstance(every, timedelta) else every
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds >= 1:
        msg = f"every is {every!r}; give an interval of at least 1 second (number or timedelta)"
        raise ValueError(msg)
    return f"@every {round(seconds)}s"


def _cron(cron: str) -> str:
    if not isinstance(cron, str) or not (cron.startswith("@")
                                         or len(cron.split()) == _CRON_FIELDS):
        msg = (f"cron is {cron!r}; give six fields (second minute hour day-of-month month "
               f"day-of-week), like '0 30 9 * * mon-fri', or @hourly/@daily/@weekly/@monthly")
        raise ValueError(msg)
    return cron


def scheduled(target: str, *, at: datetime | None = None, delay: float | timedelta | None = None,
              every: float | timedelta | None = None, cron: str | None = None,
              time_zone: str | None = None, ttl: float | timedelta | None = None,
              schedule_subject: str | None = None) -> tuple[str, dict[str, str]] | None:
    """The schedule subject and headers for publishing to ``target`` later, or ``None`` when
    no schedule is asked for. Exactly one of ``at``, ``delay``, ``every``, ``cron``."""
    given = [name for name, value in (("at", at), ("delay", delay), ("every", every),
                                      ("cron", cron)) if value is not None]
    if not given:
        if time_zone is not None or schedule_subject is not None:
            msg = "time_zone and schedule_subject need a schedule: give at, delay, every or cron"
            raise ValueError(msg)
        return None
    if len(given) > 1:
        msg = f"give one of at, delay, every, cron; got {', '.join(given)}"
        raise ValueError(msg)
    if time_zone is not None and cron is None:
        msg = f"time_zone {time_zone!r} applies to cron schedules only; give cron= too"
        raise ValueError(msg)
    if delay is not None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else delay
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            msg = f"delay is {delay!r}; give seconds >= 0 (a number or a timedelta)"
            raise ValueError(msg)
        at = datetime.now(UTC) + timedelta(seconds=seconds)
    if at is not None:
        spec = f"@at {rfc3339(at)}"
        default_id = uuid.uuid4().hex  # one @at schedule per subject: each its own
    else:
        spec = _every(every) if every is not None else _cron(cron or "")
        default_id = "recurring"  # publishing it again replaces it, as a declaration should
    subject = validate_literal(schedule_subject or schedule_subject_for(target, default_id))
    if subject == target:
        msg = (f"schedule_subject {subject!r} is the target itself; the server needs a "
               f"subject of its own for the schedule")
        raise ValueError(msg)
    hdrs: dict[str, str] = {Header.SCHEDULE: spec, Header.SCHEDULE_TARGET: target}
    if time_zone is not None:
        hdrs[Header.SCHEDULE_TIME_ZONE] = time_zone
    if ttl is not None:
        hdrs[Header.SCHEDULE_TTL] = ttl_header(ttl)
    return subject, hdrs
