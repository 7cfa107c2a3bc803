"""The built documentation site, rendered by headless Chromium with every host name unresolvable
(so it renders offline: no CDN, no web fonts): Material's JavaScript runs (it adds the
code-copy buttons), code blocks are highlighted by Pygments at build time, and the page's
pixels show Material's header and coloured code.

Needs ``chromium`` (Debian package); skipped without it, except on CI (``CI=true``), where
``.ci/run`` installs it and a missing browser fails the test.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--host-resolver-rules=MAP * ~NOTFOUND"]  # loopback and files only: proves offline
INDIGO = (0x40, 0x51, 0xB5)  # Material's "indigo" primary colour: the header


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    if os.environ.get("CI") == "true":
        pytest.fail("chromium is missing on CI; .ci/run installs it (apt-get install chromium)")
    pytest.skip("chromium is not installed (apt-get install chromium)")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs not installed")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return out


def browse(browser: str, page: Path, tmp: Path, *args: str) -> str:
    done = subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args,
                           page.as_uri()], capture_output=True, text=True, timeout=90,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def pixels(png: bytes) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB, non-interlaced PNG (what Chromium writes) into rows of bytes."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", png[16:29])
    assert (depth, color, interlace) == (8, 2, 0), (depth, color, interlace)
    data, at = b"", 8
    while at < len(png):
        length, kind = struct.unpack(">I4s", png[at:at + 8])
        if kind == b"IDAT":
            data += png[at + 8:at + 8 + length]
        at += 12 + length
    raw, stride, rows = zlib.decompress(data), width * 3, []
    previous = bytearray(stride)
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        for x in range(stride):
            left = line[x - 3] if x >= 3 else 0
            up, corner = previous[x], previous[x - 3] if x >= 3 else 0
            if kind == 1:
                line[x] = (line[x] + left) & 0xFF
            elif kind == 2:
                line[x] = (line[x] + up) & 0xFF
            elif kind == 3:
                line[x] = (line[x] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[x] = (line[x] + (left if pa <= pb and pa <= pc else up if pb <= pc
                                      else corner)) & 0xFF
        rows.append(bytes(line))
        previous = line
    return width, height, rows


def test_the_quickstart_renders_offline_with_highlighted_code(site: Path, tmp_path: Path
                                                               ) -> None:
    browser = chromium()
    page = site / "quickstart" / "index.html"
    assert "md-code__button" not in page.read_text()  # so finding it proves the JS ran
    dom = browse(browser, page, tmp_path, "--virtual-time-budget=5000", "--dump-dom")
    assert "md-code__button" in dom, "Material's JavaScript did not run"
    assert re.search(r'<span class="k">class</span>', dom), "no Pygments highlighting"
    external = re.findall(r'<(?:script|link|img)[^>]*(?:src|href)="(https?://[^"]+)"', dom)
    assert external == [], f"the page loads from the network: {external}"

    shot = tmp_path / "quickstart.png"
    browse(browser, page, tmp_path, "--hide-scrollbars", "--window-size=1280,1000",
           f"--screenshot={shot}")
    width, height, rows = pixels(shot.read_bytes())
    assert (width, height) == (1280, 1000)
    header = rows[10]
    assert header[600 * 3:600 * 3 + 3] == bytes(INDIGO), "Material's header is not drawn"
    colours = {rows[y][x:x + 3] for y in range(300, 1000, 2) for x in range(900, 2700, 3)}
    assert len(colours) > 50, "the page is nearly blank: CSS or fonts did not render"
