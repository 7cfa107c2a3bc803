"""amebus and other NATS clients on one stream, against a real nats-server: FastStream (Python,
pydantic) and the official Node.js client (@nats-io/jetstream), both directions."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from _support import Space, serving, settled
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from amebus import Event, Route, Service, correlation_id, make_converter


@attrs.frozen
class Placed(Event):
    """The event a FastStream or Node service places; ``blob`` in FastStream's text form."""

    subject_pattern = "*.placed.*"
    event_type = "orders.Placed"
    converter = make_converter(bytes_as="text")
    ns: str
    order_id: str
    blob: bytes

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "placed", self.order_id)


@attrs.frozen
class Charged(Event):
    subject_pattern = "*.charged.*"
    event_type = "orders.Charged"
    ns: str
    order_id: str
    receipt: bytes  # amebus's default: base64

    def subject(self) -> tuple[str, ...]:
        return (self.ns, "charged", self.order_id)


def charging(space: Space, seen: list[tuple[Placed, str | None]]) -> Service:
    async def charge(event: Placed, msg: Msg) -> Charged:
        seen.append((event, correlation_id(msg)))
        return Charged(event.ns, event.order_id, b"paid:" + event.blob)

    class Billing(Service):
        on_placed = Route(space.subject("placed", "*"), charge)

    return Billing()


# -- FastStream ---------------------------------------------------------------------------------


async def test_faststream_both_ways(js: JetStreamContext, space: Space, nats_url: str) -> None:
    pydantic = pytest.importorskip("pydantic")
    nats_broker = pytest.importorskip("faststream.nats")

    class PlacedModel(pydantic.BaseModel):  # FastStream's side of the same event
        ns: str
        order_id: str
        blob: bytes

    seen: list[tuple[Placed, str | None]] = []
    received: asyncio.Queue[tuple[dict[str, Any], str, dict[str, str]]] = asyncio.Queue()
    broker = nats_broker.NatsBroker(nats_url)

    @broker.subscriber(space.subject("charged", "*"), durable=f"{space.durable}_fs",
                       pull_sub=nats_broker.PullSub(batch_size=1),
                       stream=nats_broker.JStream(space.stream, declare=False))
    async def on_charged(body: dict[str, Any], msg: nats_broker.NatsMessage) -> None:
        await received.put((body, msg.correlation_id, dict(msg.headers)))

    async with serving(charging(space, seen), js, **space.options()):
        async with broker:
            await broker.start()
            await broker.publish(PlacedModel(ns=space.prefix, order_id="o1", blob=b"card-1"),
                                 space.subject("placed", "o1"), correlation_id="fs-1",
                                 stream=space.stream)
            body, cid, headers = await asyncio.wait_for(received.get(), 10)
        await settled(js, space)
    # FastStream -> amebus: the text bytes decode, FastStream's correlation id is read
    assert seen == [(Placed(space.prefix, "o1", b"card-1"), "fs-1")]
    # amebus -> FastStream: a plain JSON body (bytes in base64), the same correlation id
    assert body == {"ns": space.prefix, "order_id": "o1",
                    "receipt": base64.b64encode(b"paid:card-1").decode()}
    assert cid == "fs-1"
    assert headers["Amebus-Event-Type"] == "orders.Charged"
    assert headers["Amebus-Correlation-Id"] == "fs-1"


# -- Node.js --------------------------------------------------------------------------------------

NODE_SCRIPT = r"""
import { connect } from "@nats-io/transport-node";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";

const [url, mode, stream, subject, body] = process.argv.slice(2);
const nc = await connect({ servers: url });
if (mode === "publish") {
  const h = headers();
  h.set("Amebus-Event-Type", "orders.Placed");
  h.set("Amebus-Correlation-Id", "node-1");
  const ack = await jetstream(nc).publish(subject, body, { headers: h, msgID: "node-1" });
  console.log(JSON.stringify({ seq: ack.seq }));
} else {
  const jsm = await jetstreamManager(nc);
  const sm = await jsm.streams.getMessage(stream, { last_by_subj: subject });
  const hdrs = {};
  for (const [k, v] of sm.header) hdrs[k] = v[0];
  console.log(JSON.stringify({ data: sm.json(), headers: hdrs }));
}
await nc.close();
"""


@pytest.fixture(scope="module")
def node_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A temp dir with @nats-io/jetstream and @nats-io/transport-node installed from npm."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("node and npm are not installed here (CI has them)")
    where = tmp_path_factory.mktemp("node")
    (where / "package.json").write_text('{"type": "module", "private": true}')
    done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                           "@nats-io/jetstream", "@nats-io/transport-node"],
                          cwd=where, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"npm install failed: {done.stdout}{done.stderr}"
    (where / "client.mjs").write_text(NODE_SCRIPT)
    yield where


async def _node(where: Path, *args: str) -> dict[str, Any]:
    process = await asyncio.create_subprocess_exec(
        "node", str(where / "client.mjs"), *args, cwd=where,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    result: dict[str, Any] = json.loads(out)
    return result


async def test_node_both_ways(js: JetStreamContext, space: Space, nats_url: str,
                              node_client: Path) -> None:
    seen: list[tuple[Placed, str | None]] = []
    body = json.dumps({"ns": space.prefix, "order_id": "o2", "blob": "card-2"})
    charged = space.subject("charged", "o2")
    async with serving(charging(space, seen), js, **space.options()):
        await _node(node_client, nats_url, "publish", space.stream,
                    space.subject("placed", "o2"), body)
        await settled(js, space, 2)  # Node's event, then amebus's result
    assert seen == [(Placed(space.prefix, "o2", b"card-2"), "node-1")]
    read = await _node(node_client, nats_url, "read", space.stream, charged)
    assert read["data"] == {"ns": space.prefix, "order_id": "o2",
                            "receipt": base64.b64encode(b"paid:card-2").decode()}
    assert read["headers"]["Amebus-Event-Type"] == "orders.Charged"
    assert read["headers"]["Amebus-Correlation-Id"] == "node-1"
