"""Services that tests/test_cli.py serves through the ``amebus`` command in a subprocess.

A handler appends one line per message to the file named by ``$AMEBUS_CLI_TEST_OUT``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import ClassVar

import attrs
from nats.aio.msg import Msg

import amebus
from tests.reliability import _scenario


@attrs.frozen
class Ping(amebus.Event):
    subject_pattern = "cli.ping.*"
    n: int

    def subject(self) -> tuple[str, ...]:
        return ("cli", "ping", str(self.n))


def _record(line: str) -> None:
    with open(os.environ["AMEBUS_CLI_TEST_OUT"], "a") as out:
        out.write(line + "\n")


class Recorder(amebus.Service):
    """Records every ping; ``$AMEBUS_CLI_TEST_DELAY`` seconds per message (0 by default)."""

    stream = "CLI"
    stream_subjects = ("cli.>",)
    concurrency = 4
    shutdown_timeout = 5.0

    @amebus.Route(Ping)
    async def ping(self, event: Ping) -> None:
        await asyncio.sleep(float(os.environ.get("AMEBUS_CLI_TEST_DELAY", "0")))
        _record(str(event.n))

    @amebus.Route("cli.raw")
    async def raw(self, payload: bytes) -> None:
        _record(payload.decode())


class Stuck(amebus.Service):
    """A handler that never finishes in time: only a second signal stops it."""

    stream = "CLI"
    stream_subjects = ("cli.>",)
    shutdown_timeout = 60.0

    @amebus.Route("cli.stuck")
    async def stuck(self, payload: bytes) -> None:
        _record("started")
        await asyncio.sleep(3600)


class Missing(amebus.Service):
    """Its stream does not exist and it does not ask amebus to create it."""

    stream = "NO_SUCH_STREAM"

    @amebus.Route("nowhere.>")
    async def nowhere(self, payload: bytes) -> None:
        """Never called."""


class Needs(amebus.Service):
    """A service whose constructor takes a dependency; ``make_needs`` builds it."""

    stream = "CLI"
    stream_subjects: ClassVar[tuple[str, ...]] = ("cli.>",)

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    @amebus.Route("cli.needs")
    async def needs(self, payload: bytes) -> None:
        _record(self.prefix + payload.decode())


def make_needs() -> Needs:
    return Needs(prefix="made:")


not_a_service = 42


class Plain:
    """A class that is not a Service."""


class Flaky(amebus.Service):
    """Acks ``flaky.ok``, naks then acks ``flaky.retry`` (fails on its first delivery), terms
    ``flaky.bad`` with the handler's own Term; for the telemetry tests."""

    stream = "FLAKY"
    stream_subjects = ("flaky.>",)
    backoff = (0.05,)
    max_deliver = 3

    @amebus.Route("flaky.ok")
    async def ok(self, payload: bytes) -> None:
        _record("ok")

    @amebus.Route("flaky.retry")
    async def retry(self, msg: Msg) -> None:
        if msg.metadata.num_delivered == 1:
            raise RuntimeError("first delivery fails")
        _record("retry")

    @amebus.Route("flaky.bad")
    async def bad(self, payload: bytes) -> None:
        raise amebus.Term("bad by design")


class Printer(amebus.Service):
    """Prints a line per message on standard output (the status-line test)."""

    stream = "CLI"
    stream_subjects = ("cli.>",)

    @amebus.Route("cli.print")
    async def show(self, payload: bytes) -> None:
        print(f"handled {payload.decode()}")
        _record(payload.decode())


class Overlapping(amebus.Service):
    """Creates a stream whose subjects overlap Recorder's stream CLI (``cli.>``)."""

    stream = "CLI_PINGS"
    stream_subjects = ("cli.ping.*",)

    @amebus.Route(Ping)
    async def ping(self, event: Ping) -> None:
        """Never called: the server refuses the stream."""


class Planned(amebus.Service):
    """A service `amebus plan` compares with a consumer made by hand (tests/test_provision.py)."""

    stream = "PLAN"
    durable = "planned"
    ack_wait = 2.0
    max_deliver = 3

    @amebus.Route("plan.*.paid")
    async def paid(self, payload: bytes) -> None:
        _record(payload.decode())


class Stamped(amebus.Service):
    """Records ``payload time pid`` per message (tests/test_control.py: pause, two processes)."""

    stream = "STAMP"
    durable = "stamped"
    concurrency = 4
    ack_wait = 5.0

    @amebus.Route("stamp.>")
    async def stamp(self, payload: bytes) -> None:
        _record(f"{payload.decode()} {time.time():.6f} {os.getpid()}")



class Worked(_scenario.JobService):
    """The reliability scenarios' job service with a short ack_wait, its ledger (``*.rec`` per
    process) in ``$AMEBUS_CLI_TEST_RECORDS`` (tests/test_cli_workers.py: ``run --workers``)."""

    stream_subjects = _scenario.SUBJECTS
    concurrency = 4
    ack_wait = 1.0
    shutdown_timeout = 5.0

    def __init__(self) -> None:
        folder = Path(os.environ["AMEBUS_CLI_TEST_RECORDS"])
        type(self).recorder = _scenario.Recorder(folder / f"{os.getpid()}.rec", str(os.getpid()))


class CrashesAtStart(Worked):
    """Every worker process dies while starting: ``run --workers`` must call it a crash loop."""

    def __init__(self) -> None:
        os._exit(3)
