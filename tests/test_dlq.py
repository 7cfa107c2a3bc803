"""Dead letters against a real nats-server: poison -> dead letter -> fix -> replay -> handled
once, the replay guard, purge, and the ``amebus dlq`` command on the same stream."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
from _support import Space, eventually, serving, settled
from nats.aio.client import Client
from nats.js import JetStreamContext

import amebus
from amebus import dlq

ROOT = Path(__file__).resolve().parent.parent


class Payments(amebus.Service):
    """Fails every message whose id is in ``broken``; records every success in ``handled``."""

    broken: ClassVar[set[str]] = set()
    handled: ClassVar[list[str]] = []

    @amebus.Route("*.*.pay")
    async def pay(self, payload: bytes) -> None:
        if payload.decode() in self.broken:
            msg = f"card {payload.decode()} declined by a bug"
            raise ValueError(msg)
        self.handled.append(payload.decode())


def cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run([sys.executable, "-m", "amebus", "dlq", *args, "--server", url],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=30,
                          check=False)


async def _dead(js: JetStreamContext, stream: str, count: int) -> list[dlq.DeadLetter]:
    letters: list[dlq.DeadLetter] = []

    async def check() -> bool:
        nonlocal letters
        letters = await dlq.read(js, stream)
        return len(letters) >= count

    await eventually(check, 10, what=f"{count} dead letter(s)")
    return letters


@pytest.fixture
async def setup(js: JetStreamContext, space: Space) -> Any:
    dead = space.stream + "_DLQ"
    await js.add_stream(name=dead, subjects=[f"dead.{space.prefix}"])
    await js.add_stream(name=space.stream, subjects=[f"{space.prefix}.>"])
    Payments.broken, Payments.handled = {"p2"}, []
    advisories: list[bytes] = []
    nc: Client = js._nc  # the test's own client

    async def advisory(msg: Any) -> None:
        advisories.append(msg.data)

    sub = await nc.subscribe(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{space.stream}.>",
                             cb=advisory)
    options = space.options(max_deliver=2, dead_letter_subject=f"dead.{space.prefix}")
    yield dead, options, advisories
    await sub.unsubscribe()
    await js.delete_stream(dead)


async def test_poison_dead_lettered_fixed_replayed_handled_once(
        js: JetStreamContext, space: Space, setup: Any, nats_url: str) -> None:
    dead, options, advisories = setup
    for n in ("p1", "p2", "p3"):
        await js.publish(space.subject("eu", "pay"), n.encode(), headers={
            "Nats-Msg-Id": f"id-{n}", "Trace": f"t-{n}"})
    async with serving(Payments(), js, **options):
        [letter] = await _dead(js, dead, 1)
        await settled(js, space, last_seq=3)
        assert letter.original_subject == space.subject("eu", "pay")
        assert letter.original_msg_id == "id-p2"
        assert (letter.stage, letter.route, letter.deliveries) == ("business", "pay", 2)
        assert "declined by a bug" in letter.error

        listed = cli(nats_url, "ls", "--stream", dead, "--route", "pay", "--json")
        assert listed.returncode == 0, listed.stderr
        [row] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (row["seq"], row["original_subject"], row["replays"]) == (
            letter.seq, space.subject("eu", "pay"), 0)

        dry = cli(nats_url, "replay", "--stream", dead, "--dry-run")
        assert dry.stdout.splitlines()[-1] == "1 would replay", dry.stdout
        Payments.broken.clear()  # the handler is fixed
        done = cli(nats_url, "replay", "--stream", dead)
        assert done.returncode == 0, done.stderr
        assert done.stdout.splitlines()[-1] == "1 replayed", done.stdout
        await settled(js, space, last_seq=4)
        again = cli(nats_url, "replay", "--stream", dead)  # a second run replays nothing
        assert "1 skipped" in again.stdout and "already replayed" in again.stdout
        purged = cli(nats_url, "purge", "--stream", dead, "--replayed")
        assert purged.stdout.startswith(f"deleted 1 dead letter(s) from {dead}: {letter.seq}")
    # The ledger: every id handled exactly once, nothing left dead, no server give-up.
    assert sorted(Payments.handled) == ["p1", "p2", "p3"]
    assert await dlq.read(js, dead) == []
    assert (await js.stream_info(dead)).state.messages == 0  # the replay mark went too
    assert advisories == []
    replayed = await js.get_msg(space.stream, 4)
    assert replayed.headers is not None
    assert replayed.headers["Trace"] == "t-p2" and replayed.headers["Amebus-Replays"] == "1"
    assert replayed.headers["Nats-Msg-Id"] != "id-p2"


async def test_replay_into_a_broken_handler_stops_at_the_guard(
        js: JetStreamContext, space: Space, setup: Any, nats_url: str) -> None:
    dead, options, advisories = setup
    await js.publish(space.subject("eu", "pay"), b"p2")
    async with serving(Payments(), js, **options):
        [first] = await _dead(js, dead, 1)
        [result] = await dlq.replay(js, dead, max_replays=1)  # still broken
        assert result.outcome == "replayed"
        letters = await _dead(js, dead, 2)
        back = letters[-1]
        assert back.replays == 1 and back.original_sequence == result.seq
        refused = cli(nats_url, "replay", "--stream", dead, "--max-replays", "1")
        assert refused.returncode == 1
        assert (f"refused {back.seq} -> {space.subject('eu', 'pay')}: it was replayed 1 "
                f"time(s) already and came back each time (limit 1)") in refused.stdout
        assert "1 skipped" in refused.stdout  # the first copy, replayed already
        await settled(js, space)
    assert Payments.handled == []
    assert [letter.seq for letter in await dlq.read(js, dead)] == [first.seq, back.seq]
    assert advisories == []


async def test_selection_and_show(js: JetStreamContext, space: Space, setup: Any,
                                  nats_url: str) -> None:
    dead, options, _ = setup
    Payments.broken = {"p1", "p2"}
    await js.publish(space.subject("eu", "pay"), b"p1")
    await js.publish(space.subject("us", "pay"), b"p2")
    async with serving(Payments(), js, **options):
        letters = await _dead(js, dead, 2)
    us = await dlq.read(js, dead, dlq.Selection(subject="*.us.pay"))
    assert [letter.data for letter in us] == [b"p2"]
    assert await dlq.read(js, dead, dlq.Selection(error="CARD P1")) == letters[:1]
    assert await dlq.read(js, dead, dlq.Selection(stage="pre-process")) == []
    assert await dlq.read(js, dead, dlq.Selection(first_seq=letters[1].seq)) == letters[1:]
    shown = cli(nats_url, "show", str(letters[0].seq), "--stream", dead)
    assert shown.returncode == 0, shown.stderr
    assert "  Amebus-Route: pay" in shown.stdout and shown.stdout.endswith("p1\n")
    table = cli(nats_url, "ls", "--stream", dead, "--original", "*.eu.*")
    assert table.stdout.splitlines()[0].split() == [
        "SEQ", "AGE", "SUBJECT", "ORIGINAL", "STAGE", "ROUTE", "DELIV", "REPLAYS", "ERROR"]
    assert table.stdout.splitlines()[-1] == f"1 dead letter(s) in stream {dead}"
    bare = cli(nats_url, "purge", "--stream", dead)
    assert bare.returncode == 2 and "give --replayed, a selection, or --all" in bare.stderr
    assert cli(nats_url, "purge", "--stream", dead, "--all").stdout.startswith("deleted 2")


def test_headers_restored_from_both_spellings() -> None:
    import datetime as dt

    headers = {"Amebus-Dead-Letter": "1", "Amebus-Original-Subject": "o.paid",
               "Amebus-Original-Stream": "O", "Amebus-Original-Sequence": "7",
               "Amebus-Original-Msg-Id": "old", "Amebus-Original-Nats-Msg-Id": "new",
               "Amebus-Original-Nats-Rollup": "sub", "Amebus-Original-Nats-TTL": "1h",
               "Amebus-Original-Nats-Expected-Stream": "O", "Nats-Expected-Stream": "DEAD",
               "Amebus-Original-Event-Type": "OrderPaid", "Amebus-Error": "x",
               "Amebus-Replays": "2", "traceparent": "00-ab"}
    letter = dlq.DeadLetter(seq=1, subject="dead", time=dt.datetime.now(dt.UTC), data=b"",
                            headers=headers)
    assert letter.original_msg_id == "new"
    assert dlq.restored_headers(letter) == {
        "Nats-TTL": "1h", "Amebus-Event-Type": "OrderPaid", "traceparent": "00-ab",
        "Nats-Expected-Stream": "O", "Amebus-Replays": "3"}
