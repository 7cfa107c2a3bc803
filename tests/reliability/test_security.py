"""Security: authenticated and TLS connections through ``serve``, wrong credentials, subject
injection, payload limits, no evaluation of message content, honest dead-letter copies."""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import nats
import nkeys
import pytest
from _scenario import (
    JobService,
    Outcome,
    Recorder,
    close,
    connect,
    ensure_stream,
    job_ids,
    publish_jobs,
    scaled,
    settled_consumer,
    wait_for,
    wait_until_done,
)
from hypothesis import HealthCheck, given, settings
from nats.aio.client import Client
from nats.aio.msg import Msg
from strategies import tokens

import amebus
from amebus import Event, PublishError, Route, Service, SubjectError
from amebus.testing import NatsServer

pytestmark = pytest.mark.reliability

AMEBUS_DIR = Path(amebus.__file__).resolve().parent


# -- credentials of every kind -------------------------------------------------------------------


def _keypair(prefix: int) -> nkeys.KeyPair:
    return nkeys.from_seed(nkeys.encode_seed(os.urandom(32), prefix))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(issuer: nkeys.KeyPair, subject: str, name: str, claims: dict[str, Any]) -> str:
    """A NATS JWT (v2) for ``subject``, signed by ``issuer``."""
    header = _b64(json.dumps({"typ": "JWT", "alg": "ed25519-nkey"}).encode())
    body: dict[str, Any] = {"iat": int(time.time()), "iss": issuer.public_key.decode(),
                            "name": name, "sub": subject, "nats": {**claims, "version": 2}}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    body["jti"] = base64.b32encode(digest).decode().rstrip("=")
    payload = _b64(json.dumps(body).encode())
    signature = _b64(issuer.sign(f"{header}.{payload}".encode()))
    return f"{header}.{payload}.{signature}"


def _creds(jwt: str, seed: bytes) -> str:
    return (f"-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n"
            f"-----BEGIN USER NKEY SEED-----\n{seed.decode()}\n------END USER NKEY SEED------\n")


def _operator_setup(tmp: Path) -> tuple[str, Path, Path]:
    """Operator mode with a memory resolver: (config, good creds file, forged creds file)."""
    operator = _keypair(nkeys.PREFIX_BYTE_OPERATOR)
    account, system = _keypair(nkeys.PREFIX_BYTE_ACCOUNT), _keypair(nkeys.PREFIX_BYTE_ACCOUNT)
    user = _keypair(nkeys.PREFIX_BYTE_USER)
    unlimited = {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                 "wildcards": True, "conn": -1, "leaf": -1}
    account_jwt = _jwt(operator, account.public_key.decode(), "app", {
        "type": "account", "limits": {**unlimited, "mem_storage": -1, "disk_storage": -1,
                                      "streams": -1, "consumer": -1}})
    system_jwt = _jwt(operator, system.public_key.decode(), "SYS",
                      {"type": "account", "limits": unlimited})
    user_claims = {"type": "user", "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1}
    good = tmp / "good.creds"
    good.write_text(_creds(_jwt(account, user.public_key.decode(), "svc", user_claims),
                           user.seed))
    stranger = _keypair(nkeys.PREFIX_BYTE_ACCOUNT)  # an account the operator never signed
    forged = tmp / "forged.creds"
    forged.write_text(_creds(_jwt(stranger, user.public_key.decode(), "svc", user_claims),
                             user.seed))
    operator_jwt = _jwt(operator, operator.public_key.decode(), "op", {"type": "operator"})
    config = (f"operator: {operator_jwt}\n"
              f"system_account: {system.public_key.decode()}\nresolver: MEMORY\n"
              f"resolver_preload: {{\n  {account.public_key.decode()}: {account_jwt}\n"
              f"  {system.public_key.decode()}: {system_jwt}\n}}\n")
    return config, good, forged


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _tls_setup(tmp: Path) -> Path:
    """A self-signed CA and a server certificate for IP 127.0.0.1, made with the openssl CLI
    (the ``cryptography`` package is not a dependency). Returns the CA file."""
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=amebus test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp)
    _openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", "/CN=127.0.0.1", cwd=tmp)
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                 "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=tmp)
    return tmp / "ca.pem"


@attrs.frozen
class Setup:
    config: str
    good: dict[str, Any]
    bad: dict[str, Any]
    refusal: str  # what the wrong credential's error says


def _setup(kind: str, tmp: Path) -> Setup:
    if kind == "user/password":
        return Setup('authorization { user: "svc", password: "s3cret" }',
                     {"user": "svc", "password": "s3cret"},
                     {"user": "svc", "password": "wrong"}, "Authorization Violation")
    if kind == "token":
        return Setup('authorization { token: "t0ken-abc" }', {"token": "t0ken-abc"},
                     {"token": "t0ken-xyz"}, "Authorization Violation")
    if kind == "nkey":
        user, other = _keypair(nkeys.PREFIX_BYTE_USER), _keypair(nkeys.PREFIX_BYTE_USER)
        return Setup(f'authorization {{ users: [ {{ nkey: "{user.public_key.decode()}" }} ] }}',
                     {"nkeys_seed_str": user.seed.decode()},
                     {"nkeys_seed_str": other.seed.decode()}, "Authorization Violation")
    if kind == "creds (JWT)":
        config, good, forged = _operator_setup(tmp)
        return Setup(config, {"user_credentials": str(good)},
                     {"user_credentials": str(forged)}, "Authorization Violation")
    if kind == "TLS":
        if shutil.which("openssl") is None:
            pytest.skip("the openssl CLI is not installed")
        ca = _tls_setup(tmp)
        config = (f'tls {{ cert_file: "{tmp / "server.pem"}", key_file: "{tmp / "server.key"}",'
                  f" timeout: 2 }}")
        untrusting = ssl.create_default_context()  # the system CAs, not ours
        return Setup(config, {"tls": ssl.create_default_context(cafile=str(ca))},
                     {"tls": untrusting}, "CERTIFICATE_VERIFY_FAILED")
    raise AssertionError(kind)


KINDS = ["user/password", "token", "nkey", "creds (JWT)", "TLS"]


@pytest.mark.parametrize("kind", KINDS)
async def test_serve_through_an_authenticated_connection(kind: str, tmp_path: Path) -> None:
    """``serve`` works through each kind of authenticated connection; the wrong credential is
    refused with the server's reason. ``allow_reconnect=False`` raises it at once; with the
    documented ``max_reconnect_attempts=-1`` nats-py never raises from ``connect`` but hands
    each refusal to ``error_cb``: it does not pass silently, but the caller must look."""
    setup = _setup(kind, tmp_path)
    records = tmp_path / "records"
    records.mkdir()
    ids = job_ids(20)
    async with NatsServer(config=setup.config) as server:
        nc = await connect(server.url, **setup.good)
        try:
            await ensure_stream(nc)
            await publish_jobs(nc, ids)
            recorder = Recorder(records / "auth.rec", "auth")
            service = type("AuthService", (JobService,), {"recorder": recorder})()
            ready = asyncio.Event()
            task = asyncio.create_task(service.serve(nc.jetstream(), ready=ready))
            try:
                await wait_until_done(records, ids, timeout=20)
                await settled_consumer(nc, timeout=10)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                recorder.close()
        finally:
            await close(nc)

        began = time.monotonic()
        with pytest.raises(Exception) as refused:
            await asyncio.wait_for(nats.connect(server.url, allow_reconnect=False,
                                                connect_timeout=2, error_cb=_ignore,
                                                **setup.bad), 10)
        raised_in = time.monotonic() - began
        assert not isinstance(refused.value, TimeoutError), "the wrong credential hung"
        assert setup.refusal in str(refused.value) + repr(refused.value), refused.value

        seen: list[BaseException] = []

        async def on_error(error: Exception) -> None:
            seen.append(error)

        began = time.monotonic()
        forever = asyncio.create_task(nats.connect(
            server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.1, connect_timeout=2,
            error_cb=on_error, **setup.bad))
        await wait_for(lambda: seen or forever.done(), 10, "the refusal, as a raise or in error_cb")
        reported_in = time.monotonic() - began
        still_retrying = not forever.done()
        forever.cancel()
        await asyncio.gather(forever, return_exceptions=True)
    assert any(setup.refusal in str(e) + repr(e) for e in seen), seen
    Outcome(f"security: {kind}", len(ids), "wrong credential", 0, 0, [], [], 0.0, {
        "served": True,
        "wrong_credential": f"{type(refused.value).__module__}.{type(refused.value).__name__}:"
                            f" {refused.value}",
        "raised_in_s (allow_reconnect=False)": round(raised_in, 3),
        "with max_reconnect_attempts=-1": (f"connect() keeps retrying; error_cb got it in "
                                           f"{reported_in:.2f}s" if still_retrying
                                           else "connect() raised"),
    }).report()


async def _ignore(_: Exception) -> None:
    """Error callback for connections expected to fail."""


# -- subject injection --------------------------------------------------------------------------


@attrs.frozen
class Tagged(Event):
    subject_pattern = "inj.*.*"
    event_type = "amebus.reliability.Tagged"

    first: str
    second: str

    def subject(self) -> tuple[str, ...]:
        return ("inj", self.first, self.second)


_BAD_IN_TOKEN = set(". \t\r\n\f\v\x00")


def _valid_token(token: str) -> bool:
    """The oracle: non-empty, not a wildcard, none of the characters that end a token or a
    protocol field (nats-py's parser also splits on a vertical tab)."""
    return token not in ("", "*", ">") and not _BAD_IN_TOKEN & set(token)


@attrs.define
class Wire:
    nc: Client
    watch: Client
    seen: list[str]
    sentinels: int = 0
    published: int = 0
    refused: int = 0


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    """A publisher and, on another connection, a core subscription on ``>`` (everything)."""
    async with NatsServer() as server:
        nc, watch = await connect(server.url), await connect(server.url)
        seen: list[str] = []

        async def on_any(msg: Msg) -> None:
            seen.append(msg.subject)

        await watch.subscribe(">", cb=on_any)
        await watch.flush()
        await ensure_stream(nc, "INJ", ["inj.>"])
        began = time.monotonic()
        try:
            yield (state := Wire(nc, watch, seen))
        finally:
            await close(nc)
            await close(watch)
    Outcome("security: subject injection (Hypothesis)", state.published + state.refused,
            "field values with '.', wildcards, whitespace, NUL, unicode", 0, 0, [], [],
            time.monotonic() - began,
            {"published_exactly": state.published, "refused": state.refused}).report()


@settings(max_examples=scaled(150, 1_500), deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(first=tokens, second=tokens)
async def test_no_field_value_changes_the_subject(wire: Wire, first: str, second: str) -> None:
    """Property, against the real server: publishing ``Tagged(first, second)`` either raises
    ``SubjectError`` and sends nothing, or delivers exactly one message, on exactly
    ``inj.<first>.<second>``, to a subscriber of ``>``."""
    wire.seen.clear()
    try:
        await Tagged(first, second).publish(wire.nc.jetstream(timeout=5))
    except SubjectError:
        raised = True
    else:
        raised = False
    wire.sentinels += 1
    sentinel = f"sentinel.{wire.sentinels}"
    await wire.nc.publish(sentinel, b"")  # same connection: arrives after anything sent before
    await wait_for(lambda: sentinel in wire.seen, 5, "the sentinel")
    user = [s for s in wire.seen if not s.startswith(("$JS.", "_INBOX.", "sentinel."))]
    valid = _valid_token(first) and _valid_token(second)
    assert raised != valid, (first, second)
    if raised:
        wire.refused += 1
        assert user == [], user
    else:
        wire.published += 1
        assert user == [f"inj.{first}.{second}"], user


# -- payload limits ------------------------------------------------------------------------------


@attrs.frozen
class Blob(Event):
    subject = "big.blob"
    event_type = "amebus.reliability.Blob"

    data: str


LIMIT = 4096


@pytest.mark.parametrize(("label", "payload_size"), [
    ("payload over max_payload", LIMIT + 1_000),
    ("payload under, payload + headers over", LIMIT - 20),
])
async def test_oversized_event_is_refused_clearly(label: str, payload_size: int) -> None:
    """``Event.publish`` of an event the server would refuse raises a ``PublishError`` that
    names the size and the limit, at once, and the connection stays up. (The server counts
    the headers too, and answers an oversized message with ``-ERR``, on which nats-py closes
    the connection for good.)"""
    async with NatsServer(max_payload=LIMIT) as server:
        nc = await connect(server.url)
        try:
            await ensure_stream(nc, "BIG", ["big.>"])
            js = nc.jetstream(timeout=3)
            event = Blob("x" * (payload_size - len('{"data":""}')))
            began = time.monotonic()
            with pytest.raises(PublishError) as refused:
                await event.publish(js)
            elapsed = time.monotonic() - began
            await asyncio.sleep(0.2)
            assert nc.is_connected and not nc.is_closed
            assert "max_payload" in str(refused.value) and str(LIMIT) in str(refused.value)
            assert elapsed < 1.0
            fits = Blob("x" * (LIMIT - 200))  # and one that fits still goes through
            assert (await fits.publish(js)).seq == 1
        finally:
            await close(nc)
    Outcome(f"payload limit: {label}", 1, f"max_payload {LIMIT}", 0, 0, [], [], elapsed,
            {"error": f"{type(refused.value).__name__}: {refused.value}"}).report()


async def test_the_size_check_matches_the_server_to_the_byte() -> None:
    """An event of exactly max_payload bytes (payload plus headers) is stored; one byte more
    is refused by amebus before sending, so the server never closes the connection."""
    async with NatsServer(max_payload=LIMIT) as server:
        nc = await connect(server.url)
        try:
            await ensure_stream(nc, "BIG", ["big.>"])
            js = nc.jetstream(timeout=3)
            headers = len("NATS/1.0\r\n") + len(f"Amebus-Event-Type: {Blob.event_type}\r\n") + 2
            exact = LIMIT - headers - len('{"data":""}')
            assert (await Blob("x" * exact).publish(js)).seq == 1
            with pytest.raises(PublishError, match="max_payload"):
                await Blob("x" * (exact + 1)).publish(js)
            assert (await Blob("x").publish(js)).seq == 2 and nc.is_connected
        finally:
            await close(nc)


# -- no evaluation of message content ----------------------------------------------------------


_FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle",
                      "yaml", "jsonpickle"}
_FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def test_no_code_path_evaluates_message_content() -> None:
    """amebus/ imports no unpickler or YAML loader and calls no eval/exec/compile."""
    problems = []
    files = sorted(AMEBUS_DIR.rglob("*.py"))
    assert len(files) > 10
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module.split(".")[0]]
            for name in names:
                if name in _FORBIDDEN_MODULES:
                    problems.append(f"{path.name}:{node.lineno} imports {name}")
            if isinstance(node, ast.Call):  # eval(...), builtins.exec(...), pickle.loads(...)
                func = node.func
                if isinstance(func, ast.Name) and func.id in _FORBIDDEN_CALLS:
                    problems.append(f"{path.name}:{node.lineno} calls {func.id}")
                elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                    owner = func.value.id
                    if (owner == "builtins" and func.attr in _FORBIDDEN_CALLS) or (
                            owner in _FORBIDDEN_MODULES):
                        problems.append(f"{path.name}:{node.lineno} calls {owner}.{func.attr}")
    assert problems == []


# -- the dead-letter copy is not a new original -----------------------------------------------


@attrs.frozen
class Payment(Event):
    subject = "pay.made"
    event_type = "amebus.reliability.Payment"

    id: str


class PaymentService(Service):
    stream = "PAY"
    durable = "pay"
    dead_letter_subject = "pay.dead"
    max_deliver = 1

    @Route(Payment)
    async def made(self, payment: Payment) -> None:
        raise ValueError(f"payment {payment.id} failed")


async def test_dead_letter_copy_cannot_pass_for_an_original(nats_server_fresh: NatsServer
                                                            ) -> None:
    """The copy is marked ``Amebus-Dead-Letter``, has no ``Nats-Msg-Id`` (so it is not
    de-duplicated against, nor mistaken for, the original) and no ``Amebus-Event-Type``
    (renamed ``Amebus-Original-...``); it is stored even though the stream saw the id."""
    nc = await connect(nats_server_fresh.url)
    try:
        await ensure_stream(nc, "PAY", ["pay.made"])
        await ensure_stream(nc, "DEAD", ["pay.dead"])
        js = nc.jetstream(timeout=5)
        original = await Payment("p-1").publish(js, msg_id="p-1", headers={"X-Trace": "abc"})
        ready = asyncio.Event()
        task = asyncio.create_task(PaymentService().serve(js, ready=ready))
        try:
            await wait_for(lambda: _stored(js, "DEAD"), 10, "the dead-letter copy")
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        copy = await js.get_msg("DEAD", 1)
        assert await _stored(js, "PAY") == 1  # the original is still there, untouched
    finally:
        await close(nc)
    headers = copy.headers or {}
    assert headers["Amebus-Dead-Letter"] == "1"
    assert "Nats-Msg-Id" not in headers and "Amebus-Event-Type" not in headers
    assert headers["Amebus-Original-Msg-Id"] == "p-1"
    assert headers["Amebus-Original-Event-Type"] == Payment.event_type
    assert headers["Amebus-Original-Sequence"] == str(original.seq)
    assert headers["Amebus-Original-Subject"] == "pay.made" and copy.subject == "pay.dead"
    assert headers["X-Trace"] == "abc"
    assert copy.data == b'{"id":"p-1"}'


async def _stored(js: Any, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)

