"""``python -m amebus``: the same as the ``amebus`` command."""

from __future__ import annotations

from amebus.cli import main

raise SystemExit(main())
