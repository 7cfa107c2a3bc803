"""The protocol parser amebus installs on a nats-py client, and direct delivery through it.

Written against nats-py 2.16.0's ``Parser.parse`` (the source of 2.9.0 has the same parser
class); the rest of the nats-py internals amebus uses are in :mod:`amebus._natsio`.

- :func:`install_parser`: nats-py 2.16's protocol parser splits a ``MSG`` line on any
  whitespace (a subject with ``\\v`` or ``\\f`` becomes a "malformed MSG" and the connection is
  dropped, on every redelivery) and decodes subjects strictly (invalid UTF-8 kills the reader
  task while the client still says it is connected). The replacement splits on space and tab
  only, as nats-server does, and decodes subjects with ``surrogateescape`` (lossless:
  ``subject.encode("utf-8", "surrogateescape")`` gives the stored bytes back).
- :func:`deliver_directly`: the parser hands the messages of one subscription (the pull
  engine's inbox) to a function itself, as it parses them, instead of through
  ``Client._process_msg``, the subscription's queue and its task (issue 20's profile:
  about 2 µs a message on nats-py 2.16). What ``_process_msg`` does for such a subscription is done
  here too: ``stats`` counted, ``sub._received`` counted, headers parsed by the client's own
  ``_process_headers`` (once for a block the same as the last message's: a pin id, a
  heartbeat), the message built as nats-py's ``Msg`` (the guard wants it as
  ``nc.msg_class``), dropped once unsubscribed, and an exception from the function reported to
  the client's ``error_cb``. Guarded: only on the nats-py versions the settlement replies are
  tested on (:data:`amebus._natsack.TESTED`), a plain ``Client``, and a subscription with no
  JetStream context of nats-py's, no request future and no message limit (nats-py's own
  processing of those is not repeated here).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from amebus import _natsio

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = ["deliver_directly", "install_parser", "stop_delivering"]

log = logging.getLogger("amebus._natsio")

_ARGS = re.compile(rb"[ \t]+")
# MSG/HMSG lines split as nats-server writes them: on space or tab (nats-py: any whitespace)
_MSG = re.compile(rb"MSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?(\d+)\r\n")
_HMSG = re.compile(rb"HMSG[ \t]+([^ \t\r\n]+)[ \t]+(\d+)[ \t]+(?:([^ \t\r\n]+)[ \t]+)?"
                   rb"(\d+)[ \t]+(\d+)\r\n")
# The same, one space apart as the server writes them: tried first, as [ \t]+ costs 0.8 µs
_MSG_SPACED = re.compile(rb"MSG ([^ \t\r\n]+) (\d+) (?:([^ \t\r\n]+) )?(\d+)\r\n")
_HMSG_SPACED = re.compile(rb"HMSG ([^ \t\r\n]+) (\d+) (?:([^ \t\r\n]+) )?(\d+) (\d+)\r\n")

_FIELDS = ("_client", "subject", "reply", "data", "headers", "_metadata", "_ackd", "_sid")

OnMessage = Callable[["Msg", int], "Awaitable[None] | None"]
"""Takes one message and the size of its header block as received (0: none); returns None,
or an awaitable the parser awaits before going on."""


def install_parser(nc: Client) -> bool:
    """Replace ``nc``'s protocol parser by one that survives hostile subjects; True if done.

    The parser object keeps its state (a read may be half parsed): only its class changes.
    """
    from nats.protocol.parser import Parser

    parser: Any = getattr(nc, "_ps", None)
    if type(parser) is _SafeParser:
        return True
    if type(parser) is not Parser or not _natsio.supported(nc):
        log.debug("nats-py %s: the hostile-subject parser is not installed", _natsio._version())
        return False
    parser.__class__ = _SafeParser
    installed: Any = parser
    installed.direct, installed.last_header, installed.last_headers = {}, b"", {}
    return True


def deliver_directly(nc: Client, sub: Subscription, on_msg: OnMessage) -> bool:
    """Have ``nc``'s parser give ``sub``'s messages to ``on_msg`` as it parses them (in order,
    with every other message and control line), bypassing the subscription's queue and task;
    False (nothing changed: the subscription's own callback gets them) where the guard says no.
    """
    refused = _direct_refused(nc, sub)
    if refused is not None:
        log.debug("messages go through the subscription's queue: %s", refused)
        return False
    parser: Any = nc._ps
    parser.direct[sub._id] = on_msg
    return True


def stop_delivering(nc: Client, sub: Subscription) -> None:
    """Undo :func:`deliver_directly` (harmless if it was not done)."""
    direct = getattr(getattr(nc, "_ps", None), "direct", None)
    if isinstance(direct, dict):
        direct.pop(getattr(sub, "_id", None), None)


def _direct_refused(nc: Any, sub: Any) -> str | None:
    from nats.aio import client

    from amebus._natsack import TESTED

    version = getattr(client, "__version__", None)
    if version not in TESTED:
        return f"nats-py {version!r} is not one of the tested versions {sorted(TESTED)}"
    if type(nc) is not client.Client or type(getattr(nc, "_ps", None)) is not _SafeParser:
        return "not a plain nats.aio.client.Client with amebus's parser installed"
    if not (isinstance(getattr(nc, "_subs", None), dict) and isinstance(nc.stats, dict)
            and callable(getattr(nc, "_process_headers", None))
            and callable(getattr(nc, "_error_cb", None))):
        return "the client lacks _subs, stats, _process_headers or _error_cb"
    from nats.aio.msg import Msg

    if nc.msg_class is not Msg or tuple(getattr(Msg, "__dataclass_fields__", ())) != _FIELDS:
        return "the client's msg_class is not nats-py's Msg with the fields amebus builds"
    if not (isinstance(getattr(sub, "_id", None), int) and nc._subs.get(sub._id) is sub
            and isinstance(getattr(sub, "_received", None), int)):
        return "the subscription is not the client's, or lacks _id or _received"
    if (getattr(sub, "_jsi", None) is not None or getattr(sub, "_future", None) is not None
            or getattr(sub, "_max_msgs", 0) != 0):
        return "the subscription has a JetStream context, a request future or a message limit"
    return None


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
    from nats.aio.msg import Msg as message
    from nats.errors import ProtocolError
    from nats.protocol import parser as p

    payload_state, control_state = p.AWAITING_MSG_PAYLOAD, p.AWAITING_CONTROL_LINE

    class SafeParser(p.Parser):
        """Reads what nats-py 2.16.0's ``Parser.parse`` reads, in the same states and fields,
        with ``MSG``/``HMSG`` lines split as the server writes them (space or tab), non-UTF-8
        subjects escaped, and the messages of the subscriptions in ``direct`` given to their
        function; other lines go to the original parser. It keeps a position in the buffer
        and cuts what it read once per call."""

        direct: dict[int, OnMessage]  # by subscription id (set by install_parser)
        last_header: bytes  # the last header block delivered directly, and what it parsed to
        last_headers: dict[str, str]

        async def parse(self, data: bytes = b"") -> None:
            buf = self.buf
            buf.extend(data)
            pos = 0  # parsed up to here: cut from the buffer once, when this call returns
            try:
                while pos < len(buf):
                    if self.state == payload_state:  # its line was read earlier
                        arg = self.msg_arg
                        subject, sid, reply, start = arg["subject"], arg["sid"], arg["reply"], pos
                    else:
                        headed = buf[pos] == 72  # "H"
                        found = (_HMSG_SPACED if headed else _MSG_SPACED).match(buf, pos) or (
                            _HMSG if headed else _MSG).match(buf, pos)
                        if found is None:
                            if buf.startswith((b"MSG ", b"MSG\t", b"HMSG ", b"HMSG\t"), pos):
                                end = buf.find(b"\r\n", pos)
                                if end < 0:
                                    return  # a split buffer: wait for the rest of the line
                                self._msg_line(bytes(buf[pos:end]))  # malformed: raises
                                pos = end + 2
                                continue
                            del buf[:pos]
                            pos = 0
                            done = await self._other()
                            buf = self.buf  # _other() leaves a new buffer behind
                            if not done:
                                return
                            continue
                        if headed:
                            subject, sid, reply, header, size = found.groups()
                            self.header_needed = int(header)
                        else:
                            subject, sid, reply, size = found.groups()
                        if not subject.isascii():
                            subject = _subject(subject)
                        sid, reply, start = int(sid), reply or b"", found.end()
                        self.needed = int(size)
                    needed = self.needed
                    if len(buf) - start < needed + 2:  # the payload is not all here yet
                        if self.state != payload_state:
                            self.msg_arg = {"subject": subject, "sid": sid, "reply": reply}
                            self.state = payload_state
                        pos = start
                        return
                    header_needed = self.header_needed
                    if header_needed > 0:
                        hdr = bytes(buf[start: start + header_needed])
                        payload = bytes(buf[start + header_needed: start + needed])
                        self.header_needed = 0
                    else:
                        hdr, payload = None, bytes(buf[start: start + needed])
                    pos = start + needed + 2
                    self.state = control_state
                    deliver = self.direct.get(sid) if self.direct else None
                    if deliver is None:
                        await self.nc._process_msg(sid, subject, reply, payload, hdr)
                    else:
                        await self._deliver(deliver, sid, subject, reply, payload, hdr)
                    if self.buf is not buf:  # reset while awaiting (a reconnect)
                        buf, pos = self.buf, 0
            finally:
                if pos:
                    del buf[:pos]

        async def _deliver(self, deliver: OnMessage, sid: int, subject: bytes, reply: bytes,
                           payload: bytes, hdr: bytes | None) -> None:
            """What ``Client._process_msg`` does for a subscription without a JetStream
            context, request future or message limit, then ``deliver(msg)``."""
            nc = self.nc
            stats = nc.stats
            stats["in_msgs"] += 1
            stats["in_bytes"] += len(payload)
            sub = nc._subs.get(sid)
            if sub is None:
                return  # unsubscribed: dropped, as nats-py does
            sub._received += 1
            headers = None
            if hdr:
                if hdr == self.last_header:  # as the last message's (a pin id, a heartbeat)
                    headers = dict(self.last_headers) if self.last_headers else None
                else:
                    headers = await nc._process_headers(hdr)
                    self.last_header, self.last_headers = hdr, dict(headers or {})
            msg = message(nc, subject.decode(), reply.decode() if reply.isascii() else
                          reply.decode("utf-8", "surrogateescape"), payload, headers, None,
                          False, sid)  # Msg's fields in order (checked by the guard)
            try:
                pending = deliver(msg, len(hdr) if hdr else 0)
                if pending is not None:
                    await pending
            except Exception as exc:  # as a subscription's task reports its callback's
                await nc._error_cb(exc)

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
            line = self.buf
            try:
                await p.Parser.parse(self)  # +OK, -ERR, PING, PONG, INFO, or "unknown"
            finally:
                if self.buf is line:  # else reset meanwhile (a reconnect): the rest is stale
                    self.buf.extend(pending)
            return self.buf is not line or len(self.buf) < before

    return SafeParser


_SafeParser: type[Any] = _make_parser()
