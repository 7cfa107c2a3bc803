"""amebus._natsparse's protocol parser, fed the bytes a server writes, split at every offset.

The real-server tests (test_hostile_subjects.py, test_large_messages.py) show it on the wire;
here a stream of control lines and messages is cut into two reads at every possible offset,
and the parser must deliver the same messages, pings and pongs each time.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.protocol.parser import Parser

from amebus import _natsparse

WIRE = (b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n"
        b"MSG a.b 1 2\r\nhi\r\n"
        b"+OK\r\nPING\r\n"
        b"MSG a.\xff\xfe 1 $JS.ACK.s.d.1.2.2.0.0 3\r\nbad\r\n"
        b"HMSG a.tab\x0bbed\t1 reply 12 14\r\nNATS/1.0\r\n\r\nhi\r\n"
        b"PONG\r\nMSG a.c 2 0\r\n\r\n-ERR 'Slow Consumer'\r\n")


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self._ps = Parser(self)

    async def _process_msg(self, sid: int, subject: bytes, reply: bytes, payload: bytes,
                           headers: bytes | None) -> None:
        self.events.append(("msg", sid, subject.decode(), reply, payload, headers))

    async def _process_ping(self) -> None:
        self.events.append(("ping",))

    async def _process_pong(self) -> None:
        self.events.append(("pong",))

    async def _process_info(self, info: dict[str, Any]) -> None:
        self.events.append(("info", info["server_id"]))

    async def _process_err(self, err: str) -> None:
        self.events.append(("err", err))

    async def _process_op_err(self, err: Exception) -> None:
        self.events.append(("op_err", err))


EXPECTED = [
    ("info", "x"),
    ("msg", 1, "a.b", b"", b"hi", None),
    ("ping",),
    ("msg", 1, "a.\udcff\udcfe", b"$JS.ACK.s.d.1.2.2.0.0", b"bad", None),
    ("msg", 1, "a.tab\x0bbed", b"reply", b"hi", b"NATS/1.0\r\n\r\n"),
    ("pong",),
    ("msg", 2, "a.c", b"", b"", None),
    ("err", "'slow consumer'"),
]


async def _parse(chunks: list[bytes]) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    assert _natsparse.install_parser(recorder)
    for chunk in chunks:
        await recorder._ps.parse(chunk)
    return recorder.events


@pytest.mark.parametrize("cut", range(len(WIRE) + 1))
async def test_every_split_parses_the_same(cut: int) -> None:
    assert await _parse([WIRE[:cut], WIRE[cut:]]) == EXPECTED


async def test_byte_by_byte() -> None:
    assert await _parse([WIRE[i:i + 1] for i in range(len(WIRE))]) == EXPECTED


async def test_escaped_subject_gives_the_stored_bytes_back() -> None:
    events = await _parse([WIRE])
    assert events[3][2].encode("utf-8", "surrogateescape") == b"a.\xff\xfe"


async def test_installed_on_a_real_client_keeps_its_state() -> None:
    nc = Client()
    parser = nc._ps
    parser.buf.extend(b"MSG a 1 ")
    assert _natsparse.install_parser(nc)
    assert nc._ps is parser and type(parser) is _natsparse._SafeParser
    assert bytes(parser.buf) == b"MSG a 1 "
    assert _natsparse.install_parser(nc)  # twice is harmless



class Resetting(Recorder):
    """Resets its parser on -ERR, as nats-py's client does when it starts reconnecting."""

    async def _process_err(self, err: str) -> None:
        await super()._process_err(err)
        self._ps.reset()


@pytest.mark.parametrize("amebus", [True, False])
async def test_what_follows_a_reset_is_dropped_as_nats_py_drops_it(amebus: bool) -> None:
    recorder = Resetting()
    if amebus:
        assert _natsparse.install_parser(recorder)
    await recorder._ps.parse(b"MSG a 1 2\r\nhi\r\n-ERR 'Stale Connection'\r\nMSG b 1 2\r\nno\r\n")
    assert recorder.events == [("msg", 1, "a", b"", b"hi", None), ("err", "'stale connection'")]
    assert bytes(recorder._ps.buf) == b""
    await recorder._ps.parse(b"MSG c 1 3\r\nnew\r\n")  # the new connection's bytes
    assert recorder.events[-1] == ("msg", 1, "c", b"", b"new", None)


# -- against nats-py's own parser, on what a server writes to a well-behaved client ----------

_ITEM = st.one_of(
    st.tuples(st.sampled_from(["orders.created.o1", "a", "$JS.API.x"]), st.integers(1, 99),
              st.sampled_from(["", "$JS.ACK.S.d.1.2.3.1764880000000000000.0", "_INBOX.x"]),
              st.one_of(st.none(), st.sampled_from([b"NATS/1.0\r\n\r\n",
                                                   b"NATS/1.0 100 Idle Heartbeat\r\n\r\n",
                                                   b"NATS/1.0\r\nA: b\r\n\r\n"])),
              st.binary(max_size=300)),
    st.sampled_from([b"PING\r\n", b"PONG\r\n", b"+OK\r\n", b"-ERR 'Slow Consumer'\r\n",
                     b'INFO {"server_id":"y","max_payload":1048576}\r\n']))


def _wire(item: Any) -> bytes:
    if isinstance(item, bytes):
        return item
    subject, sid, reply, header, payload = item
    line = f"{subject} {sid} {reply + ' ' if reply else ''}".encode()
    if header is None:
        return b"MSG %s%d\r\n%s\r\n" % (line, len(payload), payload)
    return b"HMSG %s%d %d\r\n%s%s\r\n" % (line, len(header), len(header) + len(payload),
                                            header, payload)


async def _events(wire: bytes, cuts: list[int], *, amebus: bool) -> list[tuple[Any, ...]]:
    recorder = Recorder()
    if amebus:
        assert _natsparse.install_parser(recorder)
    bounds = sorted({0, len(wire), *(cut % (len(wire) + 1) for cut in cuts)})
    for start, end in itertools.pairwise(bounds):
        await recorder._ps.parse(wire[start:end])
    return recorder.events


@given(st.lists(_ITEM, max_size=12), st.lists(st.integers(0, 10_000), max_size=6))
async def test_reads_what_nats_py_reads(items: list[Any], cuts: list[int]) -> None:
    """Where nats-py's parser is right (a well-behaved server's bytes), amebus's reads the same
    messages and control lines, however the bytes are cut into reads."""
    wire = b"".join(_wire(item) for item in items)
    assert await _events(wire, cuts, amebus=True) == await _events(wire, [], amebus=False)


# -- the lines as the server writes them, read by a faster regex first -----------------------

_NAME = st.sampled_from([b"orders.created.o1", b"$JS.ACK.S.d.1.2.3.1764880000000000000.0",
                         b"a\tb", b"a\x0bb", b"\xff\xfe", b"a\rb", b"a\nb", b"", b"7"])
_NUMBER = st.sampled_from([b"0", b"12", b"", b"x", b"1\t2", b"+1", b"1_0", b"\xd9\xa1"])
_SEP = st.sampled_from([b" "] * 6 + [b"  ", b"\t", b" \t"])


@st.composite
def _lines(draw: st.DrawFn) -> bytes:
    """MSG/HMSG-like lines: the server's shape, with tokens and separators that may be odd."""
    verb = draw(st.sampled_from([b"MSG", b"HMSG"] * 3 + [b"MSGX", b"PUB"]))
    tokens = [draw(_NAME), draw(_NUMBER)]
    if draw(st.booleans()):
        tokens.append(draw(_NAME))
    sizes = 2 if verb == b"HMSG" else 1
    tokens += [draw(_NUMBER) for _ in range(draw(st.sampled_from([sizes] * 4 + [1, 2, 3])))]
    line = verb
    for token in tokens:
        line += draw(_SEP) + token
    return line + b"\r\n" + draw(st.sampled_from([b"", b"0123456789\r\n", b"MSG a 1 0\r\n"]))


_NEVER = re.compile(rb"(?!)")


async def _read(wire: bytes, *, spaced: bool) -> tuple[Any, ...]:
    """What the parser made of ``wire``: its events and state, or what it raised (``spaced``:
    with the one-space regexes tried first, else the general ones alone)."""
    recorder = Recorder()
    assert _natsparse.install_parser(recorder)
    saved = _natsparse._MSG_SPACED, _natsparse._HMSG_SPACED
    if not spaced:
        _natsparse._MSG_SPACED = _natsparse._HMSG_SPACED = _NEVER
    try:
        await recorder._ps.parse(wire)
    except Exception as error:
        return ("raised", type(error), str(error), recorder.events)
    finally:
        _natsparse._MSG_SPACED, _natsparse._HMSG_SPACED = saved
    parser = recorder._ps
    return (parser.state, parser.msg_arg if parser.state != 0 else None, parser.needed,
            parser.header_needed, bytes(parser.buf), recorder.events)


@settings(max_examples=500)
@given(_lines())
@example(b"HMSG a 1 x 2\r\n")  # a header size that is not a number
@example(b"HMSG a 1  2\r\n")  # two spaces: an empty token
@example(b"MSG a 1 r  2\r\n")  # two spaces before the size
@example(b"MSG a\tb 1 2\r\n")  # a tab: the server's other separator
@example(b"MSG a 1 +2\r\n")  # int() takes a sign; the regexes do not
async def test_spaced_lines_read_as_the_general_regexes_read_them(line: bytes) -> None:
    """The parser reads every line the same with the one-space regexes tried first as with
    the general ones alone (and the malformed-line path after them)."""
    assert await _read(line, spaced=True) == await _read(line, spaced=False)
