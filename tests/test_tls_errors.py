"""TLS says TLS: each TLS mismatch of the ``amebus`` commands has its own sentence (no
"refused the credentials", no silent fall back to plain text), with certificates the test
makes with the openssl CLI; the good case connects."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from amebus.testing import NatsServer
from tests.test_cli import ROOT

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None,
                                reason="the openssl CLI is not installed")


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def _ca(tmp: Path, name: str) -> None:
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj",
             f"/CN={name}", "-addext", "basicConstraints=critical,CA:TRUE", "-addext",
             "keyUsage=critical,keyCertSign,cRLSign", cwd=tmp)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ca.pem (signed the server's certificate for IP 127.0.0.1 only) and other.pem."""
    tmp = tmp_path_factory.mktemp("tls")
    _ca(tmp, "ca")
    _ca(tmp, "other")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1", cwd=tmp)
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                                 "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf",
             cwd=tmp)
    return tmp


def _amebus(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if k != "NATS_URL"}
    done = subprocess.run([sys.executable, "-m", "amebus", *args, "--connect-timeout", "3"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout + done.stderr


async def test_each_tls_mismatch_says_what_it_is(certs: Path) -> None:
    tls = f'tls {{ cert_file: "{certs / "server.pem"}", key_file: "{certs / "server.key"}" }}'
    ca, other = str(certs / "ca.pem"), str(certs / "other.pem")
    async with NatsServer() as plain, NatsServer(config=tls) as secure:
        cases = [
            (["status", "--server", plain.url, "--tls-ca", ca],
             "offers no TLS, but --tls-ca/--tls-cert asks for it"),
            (["run", "tests.cli_services:Flaky", "--server", plain.url, "--tls-ca", ca],
             "offers no TLS, but --tls-ca/--tls-cert asks for it"),
            (["status", "--server", plain.url.replace("nats://", "tls://")],
             "offers no TLS, but the tls:// URL asks for it"),
            (["status", "--server", secure.url, "--tls-ca", other],
             "is not trusted (unable to get local issuer certificate); pass --tls-ca"),
            (["status", "--server", secure.url],  # the system CAs do not know the test's CA
             "is not trusted (unable to get local issuer certificate); pass --tls-ca"),
            (["status", "--server", secure.url.replace("127.0.0.1", "localhost"), "--tls-ca",
              ca], "does not name that host"),
        ]
        for args, expected in cases:
            code, said = _amebus(*args)
            assert code != 0, said
            assert "amebus: TLS error: " in said and expected in said, (args, said)
            assert "credentials" not in said and "Traceback" not in said, said
        code, said = _amebus("status", "--server", secure.url, "--tls-ca", ca)
        assert "TLS error" not in said and "no service answered" in said, said  # connected
