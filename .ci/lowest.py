"""Install the lowest versions pyproject.toml allows for amebus's own dependencies.

Each ``name>=X`` in ``[project] dependencies`` becomes ``name==X``, installed over what is
there, so the tox environment ``lowest`` runs the suite on the declared floors (and a floor
that no longer holds fails there, not in a user's environment).
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def floors() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = []
    for requirement in project["dependencies"]:
        found = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][^,;\s]*)", requirement.strip())
        if found is None:
            msg = f"dependency {requirement!r} has no single '>=' floor to pin"
            raise SystemExit(msg)
        pins.append(f"{found[1]}=={found[2]}")
    return pins


if __name__ == "__main__":
    pins = floors()
    print("installing the declared floors:", " ".join(pins), flush=True)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pins], check=True)
