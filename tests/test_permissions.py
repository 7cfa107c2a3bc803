"""The least-privilege proof: a nats-server whose service user has exactly the lists
``amebus.permissions`` generates (everything else denied) serves, acks, naks with delay,
terms, dead-letters, publishes result events, survives a server restart and shuts down, with
nothing lost (ledger: ids published vs handled vs dead-lettered, read by an admin user)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

import attrs
import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from amebus import Event, Nak, Route, Service, Term
from amebus.permissions import inbox_prefix, permissions
from amebus.testing import NatsServer
from tests._support import eventually

ADMIN, ADMIN_PW = "admin", "admin-pw-1"
SVC, SVC_PW = "svc", "svc-pw-2"


@attrs.frozen
class Done(Event):
    subject = "result.done"
    id: str


class Ledger:
    def __init__(self) -> None:
        self.handled: set[str] = set()
        self.termed: set[str] = set()
        self.attempts: dict[str, int] = {}


LEDGER = Ledger()


async def handle(msg: Msg) -> Done | None:
    job = json.loads(msg.data)
    ident, kind = job["id"], msg.subject.split(".")[1]
    LEDGER.attempts[ident] = LEDGER.attempts.get(ident, 0) + 1
    if kind == "nak" and LEDGER.attempts[ident] == 1:
        raise Nak(0.2)
    if kind == "term":
        LEDGER.termed.add(ident)
        raise Term("refused by the test")
    if kind == "dead":
        raise ValueError(f"job {ident} always fails")
    LEDGER.handled.add(ident)
    return Done(id=ident)


class Jobs(Service):
    stream = "JOBS"
    stream_subjects = ("job.>",)
    max_deliver = 2
    backoff = (0.1,)
    ack_wait = 5.0
    dead_letter_subject = "dead.jobs"
    dead_letter_stream = "DEAD_JOBS"
    work = Route("job.*", handle)


def server_config(grants: dict[str, Any]) -> str:
    users = [{"user": ADMIN, "password": ADMIN_PW},
             {"user": SVC, "password": SVC_PW, "permissions": grants}]
    return "authorization " + json.dumps({"users": users}) + "\n"


async def connect(server: NatsServer, user: str, password: str, **options: Any) -> Client:
    return await nats.connect(server.url, user=user, password=password,
                              max_reconnect_attempts=-1, reconnect_time_wait=0.2, **options)


async def dead_letters(js: Any) -> set[str]:
    try:
        info = await js.stream_info("DEAD_JOBS")
    except Exception:
        return set()
    found = set()
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        with contextlib.suppress(Exception):
            found.add(json.loads((await js.get_msg("DEAD_JOBS", seq)).data)["id"])
    return found


async def results(js: Any) -> set[str]:
    info = await js.stream_info("RESULTS")
    return {json.loads((await js.get_msg("RESULTS", seq)).data)["id"]
            for seq in range(info.state.first_seq, info.state.last_seq + 1)}


async def publish(js: Any, kinds: dict[str, str]) -> None:
    for ident, kind in kinds.items():
        await js.publish(f"job.{kind}", json.dumps({"id": ident}).encode())


def batch(prefix: str) -> dict[str, str]:
    return {f"{prefix}{kind}{i}": kind for kind in ("ok", "nak", "term", "dead")
            for i in range(3)}


async def close_all(server: NatsServer, *clients: Client | None) -> None:
    """Close the clients that connected, then stop the server."""
    for nc in clients:
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
    await server.stop()


def test_generated_lists_grant_no_wildcard_on_the_api() -> None:
    found = permissions(Jobs)
    assert not [s for s in found.allow("publish") if s.startswith("$JS.API") and
                (s.endswith(">") and not s.startswith("$JS.API.DIRECT.GET.KV_"))]
    assert found.allow("subscribe") == ["_INBOX_Jobs.>"]
    assert "result.done" in found.allow("publish")  # from handle's return annotation
    assert found.why("$JS.ACK.JOBS.Jobs.>") is not None
    verify = permissions(Jobs, provision="verify")
    assert not [s for s in verify.allow("publish") if ".CREATE.JOBS" in s]


async def test_serves_with_only_the_generated_permissions_nothing_lost() -> None:
    grants = permissions(Jobs).as_dict()
    server = NatsServer(config=server_config(grants))
    await server.start()
    admin = svc = None
    try:
        admin = await connect(server, ADMIN, ADMIN_PW)
        ajs = admin.jetstream()
        await ajs.add_stream(name="RESULTS", subjects=["result.>"])
        svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
        LEDGER.__init__()  # type: ignore[misc]
        first, second = batch("a"), batch("b")
        ready = asyncio.Event()
        task = asyncio.create_task(Jobs().serve(svc, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        await publish(ajs, first)

        def done(kinds: dict[str, str]) -> Any:
            async def check() -> bool:
                dead = await dead_letters(ajs)
                return all(
                    (ident in LEDGER.handled) if kind in ("ok", "nak") else
                    (ident in LEDGER.termed) if kind == "term" else (ident in dead)
                    for ident, kind in kinds.items())
            return check

        await eventually(done(first), 20, what="first batch settled")
        await server.restart()
        await publish(ajs, second)
        await eventually(done(second), 30, what="second batch settled after a restart")
        everything = {**first, **second}
        dead = await dead_letters(ajs)
        assert dead == {i for i, k in everything.items() if k == "dead"}
        assert LEDGER.handled == {i for i, k in everything.items() if k in ("ok", "nak")}
        assert await results(ajs) == LEDGER.handled  # every result event published
        assert all(LEDGER.attempts[i] == 2 for i, k in everything.items() if k == "nak")
        info = await ajs.consumer_info("JOBS", "Jobs")
        assert info.num_ack_pending == 0 and info.num_pending == 0
        task.cancel()  # graceful shutdown
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert "Permissions Violation" not in server.log_tail(400)
    finally:
        await close_all(server, svc, admin)


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_discovery_observer_is_found_alone_or_among_observers(wrapped: bool) -> None:
    from amebus.telemetry.discovery import Discovery
    from amebus.telemetry.health import Health
    from amebus.telemetry.observer import Observers

    discovery = Discovery(name="jobs-svc")

    class Found(Jobs):
        observer = Observers(Health(), discovery) if wrapped else discovery

    found = permissions(Found)
    assert "$SRV.*.jobs-svc" in found.allow("subscribe")
    assert found.allow_responses
    assert not permissions(Jobs).allow_responses


@pytest.mark.parametrize("flavour", ["server", "nsc"])
def test_renderings_carry_every_subject(flavour: str) -> None:
    found = permissions(Jobs, discovery=True)
    text = found.to_server_config() if flavour == "server" else found.to_nsc()
    for subject in found.allow("publish") + found.allow("subscribe"):
        assert subject in text
    assert "allow_responses" in text or "--allow-pub-response" in text


async def test_server_config_rendering_is_accepted_by_nats_server() -> None:
    found = permissions(Jobs)
    server = NatsServer(config=found.to_server_config(user=SVC, password=SVC_PW))
    await server.start()
    try:
        nc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
        try:
            # allowed: the durable's info (not found yet: the server answers)
            with contextlib.suppress(Exception):
                await nc.jetstream().consumer_info("JOBS", "Jobs", timeout=2)
        finally:
            await nc.close()
    finally:
        await server.stop()


# Lines this scenario never needs (so removing them cannot fail it): the catch-up of added
# routes, updates of streams that already match, and the server giving up (MAX_DELIVERIES).
UNEXERCISED = {"$JS.API.STREAM.UPDATE.JOBS", "$JS.API.STREAM.UPDATE.DEAD_JOBS",
               "$JS.API.CONSUMER.DURABLE.CREATE.JOBS.Jobs_catchup",
               "$JS.API.CONSUMER.MSG.NEXT.JOBS.Jobs_catchup", "$JS.ACK.JOBS.Jobs_catchup.>",
               "$JS.API.CONSUMER.DELETE.JOBS.Jobs_catchup", "$JS.API.STREAM.MSG.GET.JOBS",
               "$JS.API.CONSUMER.MSG.NEXT.amebus_gaveup_JOBS_Jobs.amebus",
               "$JS.ACK.amebus_gaveup_JOBS_Jobs.amebus.>",
               "$JS.API.STREAM.CREATE.JOBS"}  # the test creates JOBS first: inputs are kept
QUICK = ["$JS.ACK.JOBS.Jobs.>", "$JS.API.CONSUMER.MSG.NEXT.JOBS.Jobs", "dead.jobs",
         "result.done"]
ALL = [s for s in permissions(Jobs).allow("publish") if s not in UNEXERCISED]


async def _without(line: str, tmp: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Serve with ``line`` removed: the sentence naming it is logged; then serve with every
    line on the same store: every job settles (nothing was lost while it was missing)."""
    full = permissions(Jobs).as_dict()
    cut = json.loads(json.dumps(full))
    cut["publish"]["allow"].remove(line)
    kinds = batch("m")
    LEDGER.__init__()  # type: ignore[misc]
    server = NatsServer(config=server_config(cut), store_dir=tmp)
    await server.start()
    admin = await connect(server, ADMIN, ADMIN_PW)
    ajs = admin.jetstream()
    await ajs.add_stream(name="RESULTS", subjects=["result.>"])
    await ajs.add_stream(name="JOBS", subjects=["job.>"])  # so the inputs are kept regardless
    await publish(ajs, kinds)
    svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
    task = asyncio.create_task(Jobs().serve(svc))
    why = permissions(Jobs).why(line)
    try:
        await eventually(lambda: any(line in r.getMessage() and "may not publish" in
                                     r.getMessage() and (why or "") in r.getMessage()
                                     for r in caplog.records), 15,
                         what=f"the sentence naming {line!r}")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await svc.close()
        await admin.close()
        await server.stop()
    server = NatsServer(config=server_config(full), store_dir=tmp)
    await server.start()
    admin = await connect(server, ADMIN, ADMIN_PW)
    svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
    ajs = admin.jetstream()
    task = asyncio.create_task(Jobs().serve(svc))
    try:
        async def complete() -> bool:
            dead = await dead_letters(ajs)
            return all((i in LEDGER.handled) if k in ("ok", "nak") else
                       (i in LEDGER.termed) if k == "term" else (i in dead)
                       for i, k in kinds.items())
        await eventually(complete, 30, what="every job settled once the line is back")
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await svc.close()
        await admin.close()
        await server.stop()


@pytest.mark.parametrize("line", QUICK)
async def test_a_missing_line_is_named_and_loses_nothing(
        line: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    await _without(line, tmp_path, caplog)


@pytest.mark.reliability
@pytest.mark.skipif(os.environ.get("AMEBUS_RELIABILITY") != "full",
                    reason="the full per-line matrix runs with AMEBUS_RELIABILITY=full")
@pytest.mark.parametrize("line", [s for s in ALL if s not in QUICK])
async def test_every_missing_line_is_named_and_loses_nothing(
        line: str, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    await _without(line, tmp_path, caplog)


@pytest.mark.parametrize("responds", [True, False])
async def test_discovery_answers_with_the_generated_permissions(responds: bool) -> None:
    from amebus.telemetry.discovery import Discovery

    grants = permissions(Jobs, discovery=True).as_dict()
    if not responds:
        del grants["allow_responses"]  # the one right discovery adds to publishing
    server = NatsServer(config=server_config(grants))
    await server.start()
    admin = await connect(server, ADMIN, ADMIN_PW)
    svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
    try:
        await admin.jetstream().add_stream(name="DEAD_JOBS", subjects=["dead.jobs"])
        ready = asyncio.Event()
        task = asyncio.create_task(Jobs().serve(svc, ready=ready, observer=Discovery()))
        await asyncio.wait_for(ready.wait(), 10)
        await svc.flush()
        if responds:
            reply = await admin.request("$SRV.INFO.Jobs", b"", timeout=5)
            assert json.loads(reply.data)["name"] == "Jobs"
        else:
            with pytest.raises(nats.errors.TimeoutError):
                await admin.request("$SRV.INFO.Jobs", b"", timeout=1)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await svc.close()
        await admin.close()
        await server.stop()


def test_the_command_prints_each_format() -> None:
    import subprocess
    import sys

    def amebus(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "amebus", "permissions",
                               "tests.test_permissions:Jobs", *args],
                              capture_output=True, text=True, timeout=60)

    found = permissions(Jobs, discovery=True, publishes=["audit.jobs"])
    as_json = amebus("--format", "json", "--publish", "audit.jobs")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["permissions"] == found.as_dict()
    server = amebus()
    assert server.stdout.startswith("# amebus permissions for Jobs") and "authorization {" in (
        server.stdout)
    nsc = amebus("--format", "nsc", "--no-discovery", "--provision", "verify")
    assert nsc.stdout.startswith("nsc add user --account ACCOUNT --name Jobs")
    assert "$SRV" not in nsc.stdout and "STREAM.CREATE.JOBS" not in nsc.stdout
    missing = amebus("--stream", "")
    assert missing.returncode == 2 and "has no stream" in missing.stderr, missing.stderr


async def test_a_missing_info_right_fails_serve_at_bind_with_the_sentence() -> None:
    from amebus.errors import ConfigurationError

    grants = permissions(Jobs).as_dict()
    grants["publish"]["allow"].remove("$JS.API.CONSUMER.INFO.JOBS.Jobs")
    server = NatsServer(config=server_config(grants))
    await server.start()
    svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(Jobs))
    try:
        with pytest.raises(ConfigurationError) as refused:
            await Jobs().serve(svc)
        assert str(refused.value) == (
            "Jobs may not publish to '$JS.API.CONSUMER.INFO.JOBS.Jobs': needed to read the "
            "durable's info (bind, lag, health); add it to publish.allow, or run "
            f"`amebus permissions {Jobs.__module__}:Jobs`")
    finally:
        await svc.close()
        await server.stop()


async def test_the_operator_commands_work_with_the_operator_permissions() -> None:
    import subprocess
    import sys

    ops = permissions(Jobs, role="operator").as_dict()
    users = [{"user": ADMIN, "password": ADMIN_PW},
             {"user": "ops", "password": "ops-pw", "permissions": ops}]
    server = NatsServer(config="authorization " + json.dumps({"users": users}) + "\n")
    await server.start()
    admin = await connect(server, ADMIN, ADMIN_PW)
    try:
        ajs = admin.jetstream()
        await ajs.add_stream(name="JOBS", subjects=["job.>"])
        await ajs.add_stream(name="DEAD_JOBS", subjects=["dead.jobs"])
        await ajs.add_stream(name="RESULTS", subjects=["result.>"])
        ready = asyncio.Event()
        task = asyncio.create_task(Jobs().serve(admin, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        await ajs.publish("job.dead", json.dumps({"id": "o1"}).encode())

        async def dead() -> bool:
            return (await ajs.stream_info("DEAD_JOBS")).state.messages == 1

        await eventually(dead, 10, what="one dead letter")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        url = server.url.replace("nats://", "nats://ops:ops-pw@")
        for args in (["plan"], ["pause", "--until", "30s"], ["resume"], ["dlq", "ls"],
                     ["dlq", "replay"], ["dlq", "purge", "--replayed"]):
            done = subprocess.run(
                [sys.executable, "-m", "amebus", *args, "tests.test_permissions:Jobs",
                 "--server", url, "--connect-timeout", "3"], capture_output=True, text=True,
                timeout=60)
            assert done.returncode == 0, (args, done.stdout + done.stderr)
        assert (await ajs.stream_info("DEAD_JOBS")).state.messages == 0  # purged
        assert "Permissions Violation" not in server.log_tail(400)
    finally:
        await admin.close()
        await server.stop()


async def test_serve_warns_once_about_the_shared_inbox(
        caplog: pytest.LogCaptureFixture) -> None:
    grants = permissions(Jobs).as_dict()
    grants["subscribe"]["allow"].append("_INBOX.>")  # as a user connecting themselves has it
    server = NatsServer(config=server_config(grants))
    await server.start()
    svc = await connect(server, SVC, SVC_PW)  # no inbox_prefix
    try:
        for _ in range(2):
            ready = asyncio.Event()
            task = asyncio.create_task(Jobs().serve(svc, ready=ready))
            await asyncio.wait_for(ready.wait(), 10)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        warned = [r for r in caplog.records if "shared _INBOX" in r.getMessage()]
        assert [r.levelname for r in warned] == ["WARNING"]
        assert "inbox_prefix='_INBOX_Jobs'" in warned[0].getMessage()
    finally:
        await svc.close()
        await server.stop()


@attrs.frozen
class Shipped(Event):
    subject_pattern = "order.shipped.*"
    id: str

    def subject(self) -> tuple[str, ...]:
        return ("order", "shipped", self.id)


@attrs.frozen
class Computed(Event):
    id: str

    def subject(self) -> tuple[str, ...]:
        return ("x", self.id)


async def _ships(msg: Msg) -> list[Shipped] | None:
    return None


async def _unannotated(msg: Msg):  # type: ignore[no-untyped-def]
    return None


async def _computes(msg: Msg) -> Computed:
    return Computed(id="1")


class Ships(Service):
    stream = "S"
    ships = Route("in.a", _ships)


class Unannotated(Ships):
    other = Route("in.b", _unannotated)


class Computes(Ships):
    other = Route("in.c", _computes)


def test_result_subjects_come_from_the_return_annotations() -> None:
    found = permissions(Ships)
    assert "order.shipped.*" in found.allow("publish") and found.notes == ()
    for unclear in (Unannotated, Computes):
        found = permissions(unclear)
        assert "order.shipped.*" in found.allow("publish")
        assert "publishes=[...]" in found.notes[0]
    extra = permissions(Unannotated, publishes=["audit.>"])
    assert "audit.>" in extra.allow("publish")


ONCE: list[str] = []


async def handle_once(msg: Msg) -> None:
    ONCE.append(json.loads(msg.data)["id"])


class OnceJobs(Service):
    """An idempotent route: its key-value bucket needs rights of its own."""

    stream = "ONCE"
    stream_subjects = ("once.>",)
    ack_wait = 5.0
    work = Route("once.*", handle_once, idempotent=True)


async def test_an_idempotent_route_serves_with_only_the_generated_permissions() -> None:
    """The bucket of an idempotent route is in the generated lists: served with nothing else,
    every message runs once and is acked, with no Permissions Violation."""
    found = permissions(OnceJobs)
    assert "$KV.amebus_idempotency.work.>" in found.allow("publish")
    server = NatsServer(config=server_config(found.as_dict()))
    await server.start()
    admin = svc = None
    try:
        admin = await connect(server, ADMIN, ADMIN_PW)
        ajs = admin.jetstream()
        svc = await connect(server, SVC, SVC_PW, inbox_prefix=inbox_prefix(OnceJobs))
        ONCE.clear()
        ready = asyncio.Event()
        task = asyncio.create_task(OnceJobs().serve(svc, ready=ready))
        await asyncio.wait_for(ready.wait(), 10)
        for ident in ("a", "b", "c"):
            await ajs.publish("once.job", json.dumps({"id": ident}).encode(),
                              headers={"Nats-Msg-Id": f"once-{ident}"})
        await eventually(lambda: sorted(ONCE) == ["a", "b", "c"], 10, what="three handled")
        async def settled() -> bool:
            info = await ajs.consumer_info("ONCE", "OnceJobs")
            return info.num_ack_pending == 0 and info.num_pending == 0

        await eventually(settled, 10, what="everything acked")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert "Permissions Violation" not in server.log_tail(400)
    finally:
        await close_all(server, svc, admin)
