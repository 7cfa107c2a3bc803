"""The uses of nats-py internals, each guarded and with a fallback (the settlement replies
written into the outgoing buffer are in :mod:`amebus._natsack`, the parser in
:mod:`amebus._natsparse`).

Written against and tested on nats-py 2.16.0; the source of 2.9.0 has the same parser class
and the same private methods (read, not run: amebus itself does not serve on 2.9.0). Where the
guard finds something else, amebus does without: the parser workaround is not installed, and
a dead connection is left to nats-py's own pings.

- the protocol parser (hostile subjects) and direct delivery through it: :mod:`amebus._natsparse`.
- :func:`replace_connection`: nats-py has no public "this connection is dead, reconnect now";
  its own stale-connection path (``_process_op_err``) is used, after aborting the socket so
  that closing it cannot wait forever for a write buffer a dead peer never drains.
- :func:`auth_required`: whether the server asked for credentials (the private
  ``_server_info``; None when it is not there).
- :func:`jetstream_parts`: the client and API prefix behind a ``JetStreamContext`` (the
  private ``_nc`` and ``_prefix``; nats-py has no public accessor).
- :func:`last_error`: nats-py reports why it lost a connection only to ``error_cb``, which
  belongs to the user; a wrapper keeps the last error (chaining to the user's callback).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

__all__ = ["auth_required", "detection_seconds", "jetstream_parts", "last_error",
           "on_error", "replace_connection", "supported"]

log = logging.getLogger(__name__)

_TESTED = ((2, 9), (2, 16))  # the nats-py versions whose internals this module was checked on


def _version() -> tuple[int, int]:
    from importlib.metadata import version

    try:
        major, minor = version("nats-py").split(".")[:2]
        return int(major), int(minor)
    except Exception:  # not installed as a distribution (vendored): treat as unknown
        return (0, 0)


def supported(nc: Client) -> bool:
    """True if ``nc`` has the nats-py internals this module relies on."""
    from nats.protocol.parser import Parser

    if not _TESTED[0] <= _version() <= (_TESTED[1][0], 99):
        return False
    parser = getattr(nc, "_ps", None)
    return (isinstance(parser, Parser) and all(hasattr(parser, name) for name in (
        "buf", "state", "needed", "header_needed", "msg_arg")) and all(
        callable(getattr(nc, name, None)) for name in ("_process_op_err", "_process_msg")))


def detection_seconds(nc: Client) -> float | None:
    """How long nats-py's own pings take to notice a dead connection (None: unknown)."""
    options: Any = getattr(nc, "options", None)
    try:
        return float(options["ping_interval"]) * (int(options["max_outstanding_pings"]) + 1)
    except Exception:
        return None


def reconnects_allowed(nc: Client) -> bool:
    """Whether ``nc`` reconnects after losing its connection (``allow_reconnect``)."""
    options: Any = getattr(nc, "options", None)
    try:
        return bool(options["allow_reconnect"])
    except Exception:
        return True


async def replace_connection(nc: Client) -> bool:
    """Drop ``nc``'s (dead) socket and make nats-py reconnect now.

    Returns False when nats-py cannot (reconnects are off: nats-py then closes the client, as
    its own stale-connection check would) or this nats-py is not supported.
    """
    from nats.errors import StaleConnectionError

    if not supported(nc):
        return False
    allowed = reconnects_allowed(nc)
    transport: Any = getattr(nc, "_transport", None)
    writer = getattr(transport, "_io_writer", None)  # TcpTransport: an asyncio StreamWriter
    raw = getattr(writer, "transport", None)
    if raw is not None and callable(getattr(raw, "abort", None)):
        raw.abort()  # close() would wait for the unsent buffer to drain: forever, if dead
    await nc._process_op_err(StaleConnectionError())
    return allowed


def jetstream_parts(js: JetStreamContext) -> tuple[Client, str]:
    """The client and the JetStream API prefix behind ``js``.

    nats-py 2.16.0 offers no public accessor for either; both are read, never changed (the
    attributes are the same in 2.9.0).
    """
    return js._nc, js._prefix


def last_error(nc: Client) -> BaseException | None:
    """The last error nats-py reported for ``nc`` (starts recording on the first call)."""
    recorder = getattr(nc, "_amebus_errors", None)
    if recorder is None:
        original = getattr(nc, "_error_cb", None)
        if original is None:
            return None
        recorder = _ErrorRecorder(original)
        nc._error_cb = recorder
        nc._amebus_errors = recorder  # type: ignore[attr-defined]
    error: BaseException | None = recorder.error
    return error


def auth_required(nc: Client) -> bool | None:
    """Whether the server asked ``nc`` to authenticate (its INFO's ``auth_required``); None
    if unknown. nats-py 2.16 keeps the INFO only in the private ``_server_info``."""
    info = getattr(nc, "_server_info", None)
    if not isinstance(info, dict):
        return None
    return bool(info.get("auth_required"))


def on_error(nc: Client, listener: Any) -> bool:
    """Also call ``listener(error)`` (sync, must not raise) for every error nats-py reports
    for ``nc``; False if the error callback could not be wrapped."""
    last_error(nc)
    recorder = getattr(nc, "_amebus_errors", None)
    if recorder is None:
        return False
    recorder.listeners.append(listener)
    return True


class _ErrorRecorder:
    def __init__(self, original: Any) -> None:
        self.original = original
        self.error: BaseException | None = None
        self.at = 0.0
        self.listeners: list[Any] = []

    async def __call__(self, error: Exception) -> None:
        self.error, self.at = error, time.monotonic()
        for listener in self.listeners:
            try:
                listener(error)
            except Exception:  # a listener never breaks nats-py's error path
                log.debug("error listener failed", exc_info=True)
        await self.original(error)


