"""Secrets out of what amebus shows: a NATS URL's ``user:password@`` or ``token@`` becomes
``user:***@`` / ``***@`` wherever a URL is printed, logged or raised."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<info>[^@/\s,]*)@")


def redact_url(text: str) -> str:
    """``text`` (one URL or a comma-separated list) with every password or token hidden.

    >>> redact_url("nats://svc:s3cret@127.0.0.1:4222,nats://t0ken@host:4222")
    'nats://svc:***@127.0.0.1:4222,nats://***@host:4222'
    """

    def hide(match: re.Match[str]) -> str:
        user, sep, _ = match["info"].partition(":")
        return f"{match['scheme']}{user + ':***' if sep else '***'}@"

    return _USERINFO.sub(hide, text)
