"""Idempotent routes and ack_sync against a real nats-server: a service process killed between
the handler's side effect and its ack, a second process getting the redelivery."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import nats.js.errors
import pytest
from _support import Space, eventually, serving, settled
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import ConfigurationError, Route, Service
from amebus.idempotency import DEFAULT_BUCKET, Idempotent

CHILD = textwrap.dedent('''
    import asyncio, os, sys
    import nats
    from amebus import Route, Service
    from amebus.telemetry.observer import BaseObserver

    url, stream, durable, prefix, ledger, idempotent, die = sys.argv[1:]

    class KillBeforeAck(BaseObserver):
        def settled(self, msg, decision, handler):
            if die == "1":
                os._exit(9)  # the process dies after the effect, before the ack is sent

    def effect(msg):
        with open(ledger, "a") as out:  # the side effect, an independent ledger
            out.write(msg.subject + "\\n")

    class Orders(Service):
        on_in = Route(prefix + ".in.*", effect, idempotent=idempotent == "1")

    async def main():
        nc = await nats.connect(url)
        await Orders().serve(nc.jetstream(), stream=stream, durable=durable,
                             stream_subjects=[prefix + ".>"], ack_wait=1.0, max_deliver=5,
                             backoff=(0.1,), observer=KillBeforeAck())

    asyncio.run(main())
''')


async def _child(script: Path, nats_url: str, space: Space, ledger: Path, idempotent: bool,
                 die: bool) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, str(script), nats_url, space.stream, space.durable, space.prefix,
        str(ledger), "1" if idempotent else "0", "1" if die else "0",
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("idempotent", [True, False], ids=["idempotent", "plain"])
async def test_runs_once_across_a_kill_between_effect_and_ack(
        js: JetStreamContext, space: Space, nats_url: str, tmp_path: Path,
        idempotent: bool) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ledger = tmp_path / "ledger"
    first = await _child(script, nats_url, space, ledger, idempotent, die=True)
    async def bound() -> bool:  # the child made the stream and its consumer
        try:
            await js.consumer_info(space.stream, space.durable)
        except nats.js.errors.NotFoundError:
            return False
        return True

    await eventually(bound, timeout=20, what="the child's consumer")
    await js.publish(space.subject("in", "o1"), b"x", headers={"Nats-Msg-Id": "order-o1"})
    assert await asyncio.wait_for(first.wait(), 20) == 9  # killed before the ack
    assert ledger.read_text().splitlines() == [space.subject("in", "o1")]
    second = await _child(script, nats_url, space, ledger, idempotent, die=False)
    try:
        info = await settled(js, space, timeout=20)  # redelivered after ack_wait, then acked
    finally:
        second.terminate()
        await second.wait()
    assert info.delivered.stream_seq == 1
    runs = ledger.read_text().splitlines()
    # the plain route runs the effect again: the test can tell the difference
    assert len(runs) == (1 if idempotent else 2), runs
    if idempotent:
        kv = await js.key_value(DEFAULT_BUCKET)
        assert len(await kv.keys()) >= 1


async def test_a_key_function_and_ack_sync(js: JetStreamContext, space: Space) -> None:
    runs: list[str] = []

    async def handle(msg: Msg) -> None:
        runs.append(msg.subject)

    class Orders(Service):
        on_in = Route(space.subject("in", "*"), handle, ack_sync=True,
                      idempotent=Idempotent(key=lambda msg: msg.subject.rsplit(".", 1)[1],
                                            bucket=f"idem_{space.stream}", ttl=60))

    async with serving(Orders(), js, **space.options()):
        for _ in range(2):  # two messages with one key: the second is not run
            await js.publish(space.subject("in", "o7"), b"x")
        last = await js.publish(space.subject("in", "o8"), b"x")
        await settled(js, space, last.seq)
    assert runs == [space.subject("in", "o7"), space.subject("in", "o8")]
    kv = await js.key_value(f"idem_{space.stream}")
    assert len(await kv.keys()) == 2
    await js.delete_key_value(f"idem_{space.stream}")


@pytest.mark.parametrize(("value", "problem"), [
    ("yes", "idempotent='yes': give True, or Idempotent("),
    (Idempotent(ttl=0), "idempotent ttl=0: give seconds of at least 1"),
    (Idempotent(key="order_id"), "idempotent key='order_id': give a function of the event"),
])
def test_bad_idempotent_is_refused_at_class_creation(value: object, problem: str) -> None:
    with pytest.raises(ConfigurationError, match=problem.replace("(", r"\(")):
        Route("a.b", lambda msg: None, idempotent=value)  # type: ignore[arg-type]
