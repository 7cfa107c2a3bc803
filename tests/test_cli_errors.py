"""User errors the ``amebus`` command reports in one sentence, without a traceback."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

from amebus.testing import NatsServer
from tests.test_cli import _env, amebus

BAD_EVENT = '''
from __future__ import annotations

import attrs

import amebus


@attrs.frozen
class Paid(amebus.Event):
    subject: str = "order.paid"    # annotated: attrs would make it a field, before order_id
    order_id: str


class Orders(amebus.Service):
    stream = "ORDERS"

    @amebus.Route(Paid)
    async def paid(self, event: Paid) -> None:
        pass
'''


def one_sentence(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("amebus: "), stderr
    return lines[0]


@pytest.mark.parametrize("command", ["routes", "run"])
def test_annotated_subject_in_natural_field_order(tmp_path: Path, command: str) -> None:
    module = tmp_path / "bad_event.py"
    module.write_text(BAD_EVENT)
    done = amebus(command, f"{module}:Orders", env=_env(tmp_path / "out"))
    assert done.returncode == 2
    assert one_sentence(done.stderr) == (
        f"amebus: importing {str(module)!r} failed: ConfigurationError: Paid.subject is "
        f"annotated, so attrs made it a field of the payload; write `subject: ClassVar[str] = "
        f"'order.paid'` or drop the annotation")


async def test_stream_subjects_overlapping_another_stream(
        nats_server_fresh: NatsServer, tmp_path: Path) -> None:
    nc = await nats.connect(nats_server_fresh.url)
    await nc.jetstream().add_stream(name="CLI", subjects=["cli.>"])
    await nc.close()
    done = amebus("run", "tests.cli_services:Overlapping", "--server", nats_server_fresh.url,
                  env=_env(tmp_path / "out"))
    assert done.returncode == 1
    assert one_sentence(done.stderr) == (
        "amebus: cannot create the stream 'CLI_PINGS' on ['cli.ping.*']: another stream "
        "already captures some of these subjects (stream 'CLI' captures 'cli.ping.*'); serve "
        "from that stream (set stream = its name, no stream_subjects) or choose subjects no "
        "other stream captures")


async def test_publish_over_max_payload(nats_server_fresh: NatsServer, tmp_path: Path) -> None:
    nc = await nats.connect(nats_server_fresh.url)
    await nc.jetstream().add_stream(name="CLI", subjects=["cli.>"])
    limit = nc.max_payload
    await nc.close()
    done = amebus("publish", "cli.raw", "-", "--server", nats_server_fresh.url,
                  stdin=b"x" * (limit + 1), env=_env(tmp_path / "out"))
    assert done.returncode == 1
    assert one_sentence(done.stderr) == (
        f"amebus: the message to 'cli.raw' is {limit + 1} bytes, over the server's max_payload "
        f"of {limit} bytes; nothing was sent: send less, or raise max_payload in the server's "
        f"config")
