"""Every use of nats-py internals, in one place, each guarded and with a fallback (but the
settlement replies written into the outgoing buffer: :mod:`amebus._natsack`).

Written against and tested on nats-py 2.16.0; the source of 2.9.0 has the same parser class
and the same private methods (read, not run: amebus itself does not serve on 2.9.0). Where the
guard finds something else, amebus does without: the parser workaround is not installed, and
a dead connection is left to nats-py's own pings.

- :func:`install_parser`: nats-py 2.16's protocol parser splits a ``MSG`` line on any
  whitespace (a subject with ``\\v`` or ``\\f`` becomes a "malformed MSG" and the connection is
  dropped, on every redelivery) and decodes subjects strictly (invalid UTF-8 kills the reader
  task while the client still says it is connected). The replacement splits on space and tab
  only, as nats-server does, and decodes subjects with ``surrogateescape`` (lossless:
  ``subject.encode("utf-8", "surrogateescape")`` gives the stored bytes back).
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
import re
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js.client import JetStreamContext

__all__ = ["auth_required", "detection_seconds", "install_parser", "jetstream_parts", "last_error",
           "on_error", "replace_connection", "supported"]

log = logging.getLogger(__name__)

_TESTED = ((2, 9), (2, 16))  # the nats-py versions whose internals this module was checked on
_ARGS = re.compile(rb"[ \t]+")
# MSG/HMSG lines split as nats-server writes them: on space or tab (nats-py: any whitespace)
_MSG = re.compile(rb"MSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?(\d+)\r\n")
_HMSG = re.compile(rb"HMSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?"
                   rb"(\d+)[ \t]+(\d+)\r\n")


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


def install_parser(nc: Client) -> bool:
    """Replace ``nc``'s protocol parser by one that survives hostile subjects; True if done.

    The parser object keeps its state (a read may be half parsed): only its class changes.
    """
    from nats.protocol.parser import Parser

    parser = getattr(nc, "_ps", None)
    if type(parser) is _SafeParser:
        return True
    if type(parser) is not Parser or not supported(nc):
        log.debug("nats-py %s: the hostile-subject parser is not installed", _version())
        return False
    parser.__class__ = _SafeParser
    return True


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


def _subject(raw: bytes) -> bytes:
    try:
        raw.decode()
    except UnicodeDecodeError:
        return _EscapedSubject(raw)
    return raw


class _EscapedSubject(bytes):
    """A subject that is not UTF-8: nats-py's ``subject.decode()`` then escapes, not raises."""

    def decode(self, encoding: str = "utf-8", errors: str = "surrogateescape") -> str:
        return bytes.decode(self, encoding, "surrogateescape")


def _make_parser() -> type[Any]:
    from nats.errors import ProtocolError
    from nats.protocol import parser as p

    class SafeParser(p.Parser):
        """nats-py 2.16.0's ``Parser.parse`` with ``MSG``/``HMSG`` lines split as the server
        writes them (space or tab) and non-UTF-8 subjects escaped; the rest is unchanged."""

        async def parse(self, data: bytes = b"") -> None:
            self.buf.extend(data)
            while self.buf:
                if self.state == p.AWAITING_MSG_PAYLOAD:
                    if len(self.buf) < self.needed + p.CRLF_SIZE:
                        return
                    hdr = None
                    if self.header_needed > 0:
                        hdr = bytes(self.buf[: self.header_needed])
                        payload = bytes(self.buf[self.header_needed: self.needed])
                        self.header_needed = 0
                    else:
                        payload = bytes(self.buf[: self.needed])
                    del self.buf[: self.needed + p.CRLF_SIZE]
                    self.state = p.AWAITING_CONTROL_LINE
                    arg = self.msg_arg
                    await self.nc._process_msg(arg["sid"], arg["subject"], arg["reply"],
                                               payload, hdr)
                    continue
                if self.buf[0] == 72:  # "H"
                    found = _HMSG.match(self.buf)
                    if found is not None:
                        subject, sid, reply, header, size = found.groups()
                        self.header_needed = int(header)
                else:
                    found = _MSG.match(self.buf)
                    if found is not None:
                        subject, sid, reply, size = found.groups()
                if found is not None:
                    self.msg_arg = {"subject": subject if subject.isascii() else
                                    _subject(subject), "sid": int(sid), "reply": reply or b""}
                    self.needed = int(size)
                    self.state = p.AWAITING_MSG_PAYLOAD
                    del self.buf[: found.end()]
                    continue
                if self.buf.startswith((b"MSG ", b"MSG\t", b"HMSG ", b"HMSG\t")):
                    end = self.buf.find(b"\r\n")
                    if end < 0:
                        return  # a split buffer: wait for the rest of the line
                    self._msg_line(bytes(self.buf[:end]))  # malformed: raises
                    del self.buf[: end + 2]
                    continue
                if not await self._other():
                    return

        def _msg_line(self, line: bytes) -> None:
            args = _ARGS.split(line.strip(b" \t"))
            try:
                if args[0] == b"HMSG":
                    args, self.header_needed = args[:-2] + args[-1:], int(args[-2])
                if len(args) not in (4, 5):
                    raise ValueError(line)
                subject, sid, size = args[1], int(args[2]), int(args[-1])
                reply = args[3] if len(args) == 5 else b""
            except (ValueError, IndexError):
                raise ProtocolError("nats: malformed MSG") from None
            self.msg_arg = {"subject": _subject(subject), "sid": sid, "reply": reply}
            self.needed = size
            self.state = p.AWAITING_MSG_PAYLOAD

        async def _other(self) -> bool:
            """The original parser for one non-MSG line; False when it needs more bytes."""
            before = len(self.buf)
            end = self.buf.find(b"\r\n")
            if end < 0:
                return False
            pending, self.buf = self.buf[end + 2:], self.buf[: end + 2]
            try:
                await p.Parser.parse(self)  # +OK, -ERR, PING, PONG, INFO, or "unknown"
            finally:
                self.buf.extend(pending)
            return len(self.buf) < before

    return SafeParser


_SafeParser: type[Any] = _make_parser()
