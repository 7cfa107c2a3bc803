"""amebus._natsparse's protocol parser, fed the bytes a server writes, split at every offset.

The real-server tests (test_hostile_subjects.py, test_large_messages.py) show it on the wire;
here a stream of control lines and messages is cut into two reads at every possible offset,
and the parser must deliver the same messages, pings and pongs each time.
"""

from __future__ import annotations

from typing import Any

import pytest
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
