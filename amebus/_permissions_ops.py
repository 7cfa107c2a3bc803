"""The least permissions of the operator commands for one service (``amebus permissions
--role operator``): ``plan``, ``status``, ``pause``/``resume``, ``reset`` and ``dlq ls | show
| replay | purge`` (amebus/plan.py, amebus/control.py, amebus/dlq, amebus/cli/status.py)."""

from __future__ import annotations

from typing import Any

from amebus.grants import Grant

__all__ = ["OPERATOR_INBOX", "operator_grants"]

OPERATOR_INBOX = "_INBOX_amebus"
"""The reply inbox prefix of the ``amebus`` commands other than ``run``."""


def operator_grants(service: type[Any], option: dict[str, Any], api: str,
                    discovery: str | None) -> tuple[list[Grant], list[str]]:
    """The operator's grants and notes for ``service`` with the serve options ``option``."""
    stream, durable = option["stream"], option["durable"] or service.__name__
    grants = [
        Grant("publish", f"{api}.STREAM.INFO.{stream}", "amebus plan"),
        Grant("publish", f"{api}.CONSUMER.INFO.{stream}.{durable}", "amebus plan / reset"),
        Grant("publish", f"{api}.CONSUMER.PAUSE.{stream}.{durable}", "amebus pause / resume"),
        Grant("publish", f"{api}.CONSUMER.RESET.{stream}.{durable}", "amebus reset"),
        Grant("publish", f"{api}.CONSUMER.UNPIN.{stream}.{durable}", "amebus unpin"),
        Grant("publish", f"{api}.STREAM.MSG.GET.{stream}", "amebus reset --at TIME"),
        Grant("publish", "$SRV.STATS", "amebus status"),
        Grant("publish", f"$SRV.STATS.{discovery or service.__name__}", "amebus status NAME"),
    ]
    notes: list[str] = []
    subject = option.get("dead_letter_subject")
    if subject is not None:
        dead = option.get("dead_letter_stream")
        name = dead or "<the stream capturing " + subject + ">"
        if dead is None:
            notes.append(f"replace {name} with the stream that captures {subject!r}")
        grants += [
            Grant("publish", f"{api}.STREAM.NAMES", "amebus dlq: find the dead-letter stream"),
            Grant("publish", f"{api}.STREAM.MSG.GET.{name}", "amebus dlq ls / show"),
            Grant("publish", subject, "amebus dlq replay: the replay marks"),
            Grant("publish", f"{api}.STREAM.MSG.DELETE.{name}", "amebus dlq purge"),
        ]
        grants += [Grant("publish", pattern, "amebus dlq replay: to the original subjects")
                   for pattern in service.filter_subjects]
    grants.append(Grant("subscribe", f"{OPERATOR_INBOX}.>", "to receive replies"))
    return grants, notes
