"""Test support for code built on amebus: real nats-server processes, pytest fixtures, and an
in-memory harness that settles messages exactly as the real consumer does.
"""

from __future__ import annotations

from amebus.server import NatsServer, find_server_binary
from amebus.testing.cluster import NatsCluster
from amebus.testing.harness import Outcome, ServiceHarness
from amebus.testing.proxy import TcpProxy

__all__ = ["NatsCluster", "NatsServer", "Outcome", "ServiceHarness", "TcpProxy",
           "find_server_binary"]
