"""Connecting the ``amebus`` commands to NATS from their connection options (``--server``,
credentials, TLS), with one-sentence errors for a server that is absent or refuses.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import logging
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from amebus._redact import redact_url
from amebus.cli.load import USAGE, CommandError
from amebus.cli.tls import refuse_plain, tls_error

if TYPE_CHECKING:
    from nats.aio.client import Client

__all__ = ["MAX_OUTSTANDING_PINGS", "PING_INTERVAL", "close", "connect", "jetstream_error",
           "server_url"]

log = logging.getLogger("amebus.cli")

PING_INTERVAL = 10
"""Seconds between the client's PINGs on connections ``amebus run`` makes."""
MAX_OUTSTANDING_PINGS = 2
"""Unanswered PINGs before nats-py drops the connection: dead within 10 x (2 + 1) = 30 s."""


def _connect_options(args: argparse.Namespace) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if bool(args.user) != bool(args.password):
        msg = "--user and --password go together; give both"
        raise CommandError(msg, USAGE)
    if args.user:
        options.update(user=args.user, password=args.password)
    if args.token:
        options["token"] = args.token
    for flag, value, key in (("--creds", args.creds, "user_credentials"),
                             ("--nkey", args.nkey, "nkeys_seed")):
        if value is None:
            continue
        if not Path(value).is_file():
            msg = f"{flag} {value!r}: no such file"
            raise CommandError(msg, USAGE)
        if importlib.util.find_spec("nkeys") is None:
            msg = f"{flag} needs the nkeys package; install it with: pip install nkeys"
            raise CommandError(msg, USAGE)
        options[key] = value
    if args.tls_cert or args.tls_key or args.tls_ca:
        if bool(args.tls_cert) != bool(args.tls_key):
            msg = "--tls-cert and --tls-key go together; give both"
            raise CommandError(msg, USAGE)
        try:
            context = ssl.create_default_context(cafile=args.tls_ca)
            if args.tls_cert:
                context.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as exc:
            msg = f"cannot load the TLS files: {exc}"
            raise CommandError(msg, USAGE) from None
        options["tls"] = context
    return options


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("authorization", "authentication", "permissions"))


async def connect(url: str, args: argparse.Namespace, name: str,
                  inbox_prefix: str | None = None) -> Client:
    """Connect, reconnecting forever once connected; give up on the first attempt after
    ``--connect-timeout`` seconds, or at once if the server refuses the credentials.
    ``inbox_prefix``: the service's private reply inbox (amebus.permissions.inbox_prefix);
    default ``_INBOX_amebus``, the operator commands' own."""
    from nats.aio.client import Client

    options = _connect_options(args)
    # the operator commands reply on their own inbox (amebus permissions --role operator)
    options["inbox_prefix"] = inbox_prefix or "_INBOX_amebus"
    connected = False
    errors: list[BaseException] = []
    refused = asyncio.Event()

    async def on_error(exc: Exception) -> None:
        if connected:
            log.warning("NATS connection error: %s", exc)
            return
        errors.append(exc)
        if _is_auth_error(exc):
            refused.set()

    async def on_disconnected() -> None:
        if connected and not nc.is_closed:
            log.warning("disconnected from NATS; reconnecting")

    async def on_reconnected() -> None:
        if connected:
            where = nc.connected_url
            log.warning("reconnected to %s", f"{where.hostname}:{where.port}" if where else "?")

    nc = Client()
    servers = [s.strip() for s in url.split(",") if s.strip()]
    plain = await refuse_plain(servers, "tls" in options, min(2.0, args.connect_timeout))
    if plain is not None:
        raise CommandError(plain)
    attempt = asyncio.create_task(nc.connect(
        # ping_interval 10 s x (2 + 1): nats-py finds a dead connection within 30 s by itself
        # (its defaults, 120 s x 3, take 6 minutes; docs/deployment.md)
        servers, name=name, max_reconnect_attempts=-1, reconnect_time_wait=1,
        ping_interval=PING_INTERVAL, max_outstanding_pings=MAX_OUTSTANDING_PINGS,
        connect_timeout=max(1, round(args.connect_timeout)), error_cb=on_error,
        disconnected_cb=on_disconnected, reconnected_cb=on_reconnected, **options))
    watch = asyncio.create_task(refused.wait())
    done, _ = await asyncio.wait({attempt, watch}, timeout=args.connect_timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    watch.cancel()
    if attempt in done and attempt.exception() is None:
        connected = True
        return nc
    attempt.cancel()
    with contextlib.suppress(BaseException):
        await attempt
    with contextlib.suppress(Exception):
        await nc.close()
    last = attempt.exception() if attempt.done() and not attempt.cancelled() else None
    last = last or (errors[-1] if errors else None)
    tls = tls_error(last, url)
    if tls is not None:
        raise CommandError(tls)
    url = redact_url(url)
    if refused.is_set():
        msg = f"the NATS server at {url} refused the credentials ({last})"
    else:
        why = f"{type(last).__name__}: {last}" if last else "no answer"
        msg = (f"cannot connect to a NATS server at {url} within {args.connect_timeout:g}s "
               f"({why}); check --server / NATS_URL and that the server runs")
    raise CommandError(msg)


def server_url(args: argparse.Namespace) -> str | None:
    """``--server``, else ``$NATS_URL``; None when neither is given."""
    url: str | None = args.server or os.environ.get("NATS_URL") or None
    return url


async def close(nc: Client) -> None:
    """Flush and close ``nc``, bounded in time, ignoring errors."""
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.flush(), 2)
    with contextlib.suppress(Exception):
        await asyncio.wait_for(nc.close(), 5)


def jetstream_error(exc: BaseException, url: str) -> CommandError | None:
    """The CommandError for a JetStream that is off or unreachable, else None."""
    from nats.errors import NoRespondersError
    from nats.errors import TimeoutError as NatsTimeout
    from nats.js.errors import ServiceUnavailableError

    url = redact_url(url)
    if isinstance(exc, NoRespondersError | ServiceUnavailableError):
        return CommandError(f"the NATS server at {url} does not answer JetStream requests; "
                            f"enable JetStream on it (nats-server -js)")
    if isinstance(exc, NatsTimeout):
        return CommandError(f"a JetStream request to {url} timed out; is JetStream enabled, "
                            f"and may this user call the JetStream API?")
    return None
