"""The real nats-server process of tests: :mod:`amebus.server`, re-exported here for test code
(the command line's embedded server imports it from :mod:`amebus.server`, not from here)."""

from __future__ import annotations

from amebus.server import ENV_VAR, HOST, NatsServer, find_server_binary, free_ports

__all__ = ["ENV_VAR", "HOST", "NatsServer", "find_server_binary", "free_ports"]
