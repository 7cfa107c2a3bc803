"""One log line per settlement, against a real nats-server: DEBUG for an ack, INFO for a nak,
WARNING with the reason for a term; a handler's own Term is logged; a deliberate Nak on the
last delivery is logged without a traceback; and the observer option is checked at class
creation."""

from __future__ import annotations

import logging

import pytest
from _support import Space, eventually, serving
from nats.aio.client import Client

import amebus


async def test_one_line_per_settlement(nc: Client, space: Space,
                                       caplog: pytest.LogCaptureFixture) -> None:
    calls: list[str] = []

    class Logged(amebus.Service):
        @amebus.Route(space.subject("ok"))
        async def ok(self, payload: bytes) -> None:
            calls.append("ok")

        @amebus.Route(space.subject("term"))
        async def term(self, payload: bytes) -> None:
            calls.append("term")
            raise amebus.Term("not for us")

        @amebus.Route(space.subject("nak"))
        async def nak(self, payload: bytes) -> None:
            calls.append("nak")
            raise amebus.Nak(0.05)

    caplog.set_level(logging.DEBUG, logger="amebus")
    js = nc.jetstream()
    async with serving(Logged(), nc, **space.options(max_deliver=2)):
        for name in ("ok", "term", "nak"):
            await js.publish(space.subject(name), b"")
        await eventually(lambda: calls.count("nak") == 2 and len(calls) == 4,
                         what="every delivery")
        await eventually(lambda: sum("settled" in r.message for r in caplog.records) == 4,
                         what="four settlement lines")
    settled = [r for r in caplog.records if r.name == "amebus.consumer"
               and r.message.startswith("settled")]
    lines = {(r.levelname, r.message) for r in settled}
    ok, term, nak = (space.subject(n) for n in ("ok", "term", "nak"))
    assert ("DEBUG", f"settled {ok!r} (route ok, stream seq 1, delivery 1): acked") in lines
    assert ("WARNING", f"settled {term!r} (route term, stream seq 2, delivery 1): termed: "
            f"not for us") in lines  # the handler's own Term
    assert ("INFO", f"settled {nak!r} (route nak, stream seq 3, delivery 1): naked, "
            f"redelivery in 0.05s") in lines
    last = [r for r in settled if "delivery 2" in r.message]
    assert [r.levelname for r in last] == ["WARNING"]
    assert "termed: failed on attempt 2 of 2: Nak:" in last[0].message
    failure = [r for r in caplog.records if r.name == "amebus" and "Nak" in r.message]
    assert len(failure) == 1 and failure[0].levelname == "ERROR"
    assert failure[0].exc_info is None  # deliberate: no traceback


class TestObserverOption:
    def test_a_non_observer_is_refused_at_class_creation(self) -> None:
        with pytest.raises(amebus.ConfigurationError, match=r"observer 5 is not an Observer "
                           r"\(missing start, stop, .*BaseObserver"):
            class Bad(amebus.Service):
                stream = "S"
                observer = 5  # type: ignore[assignment]

    def test_a_class_instead_of_an_instance_is_refused(self) -> None:
        from amebus.telemetry import BaseObserver

        with pytest.raises(amebus.ConfigurationError, match="a class; pass an instance"):
            class Bad(amebus.Service):
                stream = "S"
                observer = BaseObserver  # type: ignore[assignment]
