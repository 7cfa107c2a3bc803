"""Secrets stay secret: with a password (in the URL), a token and an NKey seed, everything
amebus shows (``amebus run``'s log and status lines at DEBUG, ``/metrics``, ``/readyz``,
``amebus status``, ``$SRV.INFO``/``STATS`` replies, a refused connection's sentence, the API's
log records, exception texts and dead-letter headers) is captured and holds none of them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from nats.aio.msg import Msg

from amebus import Route, Service
from amebus.errors import ConfigurationError
from amebus.telemetry.discovery import Discovery
from amebus.testing import NatsServer
from tests._support import eventually
from tests.test_cli import ROOT, Running, wait_handled
from tests.test_telemetry import get

pytest_plugins = ["tests.test_cli"]  # the start / out fixtures

PASSWORD, TOKEN = "pw-Zq81secret", "tok-Yx72secret"


def _setup(kind: str, tmp: Path) -> tuple[str, dict[str, Any], list[str], str, list[str]]:
    """(server config, nats.connect options, CLI flags, the URL scheme part, the secrets)."""
    if kind == "password":
        return (f'authorization {{ user: "svc", password: "{PASSWORD}" }}', {}, [],
                f"svc:{PASSWORD}@", [PASSWORD])
    if kind == "token":
        return (f'authorization {{ token: "{TOKEN}" }}', {"token": TOKEN},
                ["--token", TOKEN], "", [TOKEN])
    user = nkeys.from_seed(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    seed = user.seed.decode()
    (tmp / "svc.nk").write_text(seed)
    return (f'authorization {{ users: [ {{ nkey: "{user.public_key.decode()}" }} ] }}',
            {"nkeys_seed_str": seed}, ["--nkey", str(tmp / "svc.nk")], "", [seed, seed[2:20]])


def _cli(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run([sys.executable, "-m", "amebus", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


class Failing(Service):
    stream = "SECRETS"
    stream_subjects = ("secret.>",)
    max_deliver = 1
    dead_letter_subject = "dead.secrets"
    dead_letter_stream = "DEAD_SECRETS"

    @Route("secret.fail")
    async def fail(self, msg: Msg) -> None:
        raise RuntimeError("always fails")


@pytest.mark.parametrize("kind", ["password", "token", "nkey"])
async def test_no_secret_in_anything_amebus_shows(
        kind: str, tmp_path: Path, start: Callable[..., Running], out: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    config, options, flags, userinfo, secrets = _setup(kind, tmp_path)
    shown: list[str] = []
    async with NatsServer(config=config) as server:
        url = server.url.replace("nats://", f"nats://{userinfo}")
        nc = await nats.connect(url, **options)
        try:
            # the CLI: run (DEBUG log, status lines, metrics, readiness), status, a refusal
            run = start("tests.cli_services:Flaky", "--server", url, *flags, "--log-level",
                        "DEBUG", "--status-interval", "0.2", "--metrics", "127.0.0.1:0")
            text = await run.wait_for("serving")
            base = re.search(r"metrics and health on (http://127\.0\.0\.1:\d+)", text)
            assert base, text
            js = nc.jetstream()
            await js.publish("flaky.ok", b"")
            await js.publish("flaky.bad", b"")
            await wait_handled(out, 1)
            for path in ("/metrics", "/readyz"):
                shown.append((await get(base[1] + path))[1])
            for verb in ("INFO", "STATS"):
                shown.append((await nc.request(f"$SRV.{verb}", b"", timeout=5)).data.decode())
            shown.append(_cli("status", "--server", url, *flags))
            wrong = [f.replace(TOKEN, TOKEN[:-1]) for f in flags]
            shown.append(_cli("status", "--server", url.replace(PASSWORD, PASSWORD[:-1]),
                              *wrong, "--connect-timeout", "3"))
            assert await run.stop() == 0
            shown.append(run.stderr)
            # the API: log records, an exception's text, dead-letter headers
            caplog.set_level("DEBUG")
            with pytest.raises(ConfigurationError) as refused:
                await Failing().serve(nc, provision="verify")
            shown.append(str(refused.value))
            ready = asyncio.Event()
            task = asyncio.create_task(Failing().serve(nc, ready=ready, observer=Discovery()))
            await asyncio.wait_for(ready.wait(), 10)
            await js.publish("secret.fail", b"x")

            async def dead() -> bool:
                try:
                    return (await js.stream_info("DEAD_SECRETS")).state.messages == 1
                except Exception:
                    return False

            await eventually(dead, 10, what="the dead-letter copy")
            copy = await js.get_msg("DEAD_SECRETS", 1)
            shown.append(json.dumps(dict(copy.headers or {})))
            shown.append((await nc.request("$SRV.INFO.Failing", b"", timeout=5)).data.decode())
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            shown.extend(record.getMessage() for record in caplog.records)
        finally:
            await nc.close()
    everything = "\n".join(shown)
    assert "serving" in everything and "amebus_messages_total" in everything  # captured
    for secret in secrets:
        assert secret not in everything, f"{kind}: a secret was shown"
    if kind == "password":
        assert PASSWORD[:-1] not in everything  # the wrong one is not shown either
