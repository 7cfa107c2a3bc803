"""Test support for code built on amebus: real nats-server processes and pytest fixtures."""

from __future__ import annotations

from amebus.testing.server import NatsCluster, NatsServer, find_server_binary

__all__ = ["NatsCluster", "NatsServer", "find_server_binary"]
