"""Security through the command line: every kind of credential works with ``amebus publish``
(and ``amebus run``), and the wrong one gives one sentence and exit 1, not a hang."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from _scenario import close, connect, ensure_stream
from test_security import KINDS, _setup

from amebus.testing import NatsServer

pytestmark = pytest.mark.reliability

ROOT = Path(__file__).resolve().parents[2]


def _flags(credential: dict[str, Any], tmp: Path, *, good: bool) -> list[str]:
    """The command-line options that carry ``credential`` (the nats.connect keywords)."""
    if "user" in credential:
        return ["--user", credential["user"], "--password", credential["password"]]
    if "token" in credential:
        return ["--token", credential["token"]]
    if "nkeys_seed_str" in credential:
        seed = tmp / f"seed-{len(list(tmp.iterdir()))}.nk"
        seed.write_text(credential["nkeys_seed_str"])
        return ["--nkey", str(seed)]
    if "user_credentials" in credential:
        return ["--creds", credential["user_credentials"]]
    if "tls" in credential:  # the good one trusts the test's CA, the bad one another CA
        return ["--tls-ca", str(tmp / "ca.pem") if good else _other_ca(tmp)]
    raise AssertionError(credential)


def _other_ca(tmp: Path) -> str:
    """A CA bundle that does not hold the test's CA (for the wrong TLS credential)."""
    other = tmp / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(tmp / "other.key"),
                    "-out", str(other), "-days", "1", "-subj", "/CN=someone else"],
                   check=True, capture_output=True, timeout=30)
    return str(other)


def _amebus(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    return subprocess.run([sys.executable, "-m", "amebus", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", KINDS)
async def test_publish_through_each_credential(kind: str, tmp_path: Path) -> None:
    setup = _setup(kind, tmp_path)
    async with NatsServer(config=setup.config) as server:
        nc = await connect(server.url, **setup.good)
        try:
            await ensure_stream(nc)
        finally:
            await close(nc)
        good = _amebus("publish", "rel.cli", '{"id": "1"}', "--server", server.url,
                       "--connect-timeout", "3", *_flags(setup.good, tmp_path, good=True))
        assert good.returncode == 0, good.stdout + good.stderr
        assert "seq 1" in good.stdout or '"seq": 1' in good.stdout, good.stdout

        bad = _amebus("publish", "rel.cli", '{"id": "2"}', "--server", server.url,
                      "--connect-timeout", "3", *_flags(setup.bad, tmp_path, good=False))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        said = [line for line in bad.stderr.strip().splitlines()
                if line.startswith("amebus:")]
        assert len(said) == 1, bad.stderr  # one sentence, no traceback
        assert "Traceback" not in bad.stderr
