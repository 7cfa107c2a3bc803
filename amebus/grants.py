"""The allow lists of one service (:class:`Permissions`, one :class:`Grant` per subject) and
their renderings: a nats-server ``authorization`` block, JSON, ``nsc`` flags.

:mod:`amebus.permissions` computes them from a service class.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any, Literal

import attrs

__all__ = ["Direction", "Grant", "Permissions", "inbox_prefix"]

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")
Direction = Literal["publish", "subscribe"]


def inbox_prefix(service: type[Any] | str) -> str:
    """The private reply inbox prefix of ``service`` (a class or a name):
    ``_INBOX_<name>``, one subject token; connect with ``inbox_prefix=`` this."""
    name = service if isinstance(service, str) else service.__name__
    return "_INBOX_" + _TOKEN.sub("_", name)


@attrs.frozen
class Grant:
    """One allowed subject: which direction, and what amebus needs it for."""

    direction: Direction
    subject: str
    why: str


@attrs.frozen
class Permissions:
    """The allow lists of one service (everything else denied)."""

    service: str
    grants: tuple[Grant, ...]
    allow_responses: bool
    inbox_prefix: str
    notes: tuple[str, ...] = ()
    target: str = ""  # module:Class, for the `amebus permissions` hint

    def allow(self, direction: Direction) -> list[str]:
        """The subjects allowed in ``direction``, in order, without duplicates."""
        return list(dict.fromkeys(g.subject for g in self.grants if g.direction == direction))

    def why(self, subject: str) -> str | None:
        """What amebus needs ``subject`` for (the first grant naming it), None if not granted."""
        return next((g.why for g in self.grants if g.subject == subject), None)

    def as_dict(self) -> dict[str, Any]:
        """``{"publish": {"allow": [...]}, "subscribe": {"allow": [...]}, ...}``: the
        ``permissions`` block of a nats-server user."""
        block: dict[str, Any] = {"publish": {"allow": self.allow("publish")},
                                 "subscribe": {"allow": self.allow("subscribe")}}
        if self.allow_responses:
            block["allow_responses"] = True
        return block

    def to_json(self) -> str:
        """The lists as JSON, with the reason for each subject."""
        return json.dumps({"service": self.service, "inbox_prefix": self.inbox_prefix,
                           "permissions": self.as_dict(),
                           "grants": [attrs.asdict(g) for g in self.grants],
                           "notes": list(self.notes)}, indent=2)

    def to_server_config(self, user: str | None = None, password: str = "CHANGE_ME") -> str:
        """A nats-server ``authorization { users = [...] }`` block (a placeholder password)."""

        def items(subjects: list[str]) -> str:
            return "".join(f"          {json.dumps(s)}\n" for s in subjects)

        lines = [f"# amebus permissions for {self.service}; connect with inbox_prefix "
                 f"{self.inbox_prefix!r}", *(f"# {note}" for note in self.notes),
                 "authorization {", "  users = [", "    {",
                 f"      user: {json.dumps(user or self.service)}",
                 f"      password: {json.dumps(password)}", "      permissions: {",
                 "        publish: { allow: [", items(self.allow("publish")).rstrip("\n"),
                 "        ] }", "        subscribe: { allow: [",
                 items(self.allow("subscribe")).rstrip("\n"), "        ] }"]
        if self.allow_responses:
            lines.append("        allow_responses: true")
        lines += ["      }", "    }", "  ]", "}"]
        return "\n".join(line for line in lines if line) + "\n"

    def to_nsc(self, account: str = "ACCOUNT", user: str | None = None) -> str:
        """The ``nsc add user`` command of an operator-mode user with these lists."""
        args = [f"nsc add user --account {shlex.quote(account)} --name "
                f"{shlex.quote(user or self.service)}",
                f"--allow-pub {shlex.quote(','.join(self.allow('publish')))}",
                f"--allow-sub {shlex.quote(','.join(self.allow('subscribe')))}"]
        if self.allow_responses:
            args.append("--allow-pub-response")
        return " \\\n  ".join(args) + "\n"
