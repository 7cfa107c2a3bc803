"""TLS says TLS (the ``amebus`` commands): a connection that asks for TLS (a ``tls://`` URL or
``--tls-ca``/``--tls-cert``) never falls back to plain text, and a failed handshake is
reported as a TLS error (unknown CA, wrong host name) instead of a refused credential.

nats-py 2.16.0 upgrades to TLS only when the server's INFO asks for it: against a server
without TLS it connects in plain text, credentials included, although ``tls://`` or a TLS
context was given. So before connecting, :func:`refuse_plain` reads each server's INFO line
over a plain socket (nothing is sent) and refuses one that offers no TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from urllib.parse import urlsplit

from amebus._redact import redact_url

__all__ = ["refuse_plain", "tls_error"]


async def _offers_tls(host: str, port: int, timeout: float) -> bool | None:
    """Whether the server at host:port offers TLS (its INFO), None if it cannot be read."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line.startswith(b"INFO "):
        return None  # a TLS-first server or something else: let the handshake decide
    try:
        info = json.loads(line[5:])
    except ValueError:
        return None
    return bool(info.get("tls_required") or info.get("tls_available"))


async def refuse_plain(servers: list[str], tls_asked: bool, timeout: float) -> str | None:
    """The sentence refusing a server that offers no TLS when TLS is asked (by ``tls_asked``
    or a ``tls://`` URL), else None."""
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if not (tls_asked or parts.scheme == "tls") or parts.hostname is None:
            continue
        if await _offers_tls(parts.hostname, parts.port or 4222, timeout) is False:
            flag = "the tls:// URL" if parts.scheme == "tls" else "--tls-ca/--tls-cert"
            return (f"TLS error: the NATS server at {redact_url(server)} offers no TLS, but "
                    f"{flag} asks for it; amebus never falls back to plain text: enable TLS on "
                    f"the server, or use a nats:// URL without TLS options")
    return None


def tls_error(exc: BaseException | None, url: str) -> str | None:
    """The sentence for a failed TLS handshake, None if ``exc`` is no TLS error."""
    if not isinstance(exc, ssl.SSLError):
        return None
    shown = redact_url(url)
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or str(exc)
        if "hostname" in why.lower() or "ip address mismatch" in why.lower():
            return (f"TLS error: the certificate of the NATS server at {shown} does not name "
                    f"that host ({why}); connect by a name (or IP) the certificate lists")
        return (f"TLS error: the certificate of the NATS server at {shown} is not trusted "
                f"({why}); pass --tls-ca with the CA that signed it")
    return f"TLS error with the NATS server at {shown}: {exc}"
