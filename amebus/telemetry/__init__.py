"""Telemetry of a serving service: Prometheus metrics, health endpoints, NATS service
discovery ($SRV) and OpenTelemetry traces, each an optional :class:`Observer`.

Pass one (or several, as :class:`Observers`) to ``serve(js, observer=...)``. The metrics and
tracing observers need the ``amebus[prometheus]`` and ``amebus[otel]`` extras; they are
imported from their own modules (``amebus.telemetry.metrics`` ...), or lazily from here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from amebus.telemetry.observer import BaseObserver, ConsumerLag, Observer, Observers, Serving

if TYPE_CHECKING:
    from amebus.telemetry.discovery import Discovery
    from amebus.telemetry.health import Health
    from amebus.telemetry.metrics import Metrics
    from amebus.telemetry.otel import Tracing

__all__ = ["BaseObserver", "ConsumerLag", "Discovery", "Health", "Metrics", "Observer",
           "Observers", "Serving", "Tracing"]

_LAZY = {"Metrics": "metrics", "Health": "health", "Discovery": "discovery",
         "Tracing": "otel"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        msg = f"module 'amebus.telemetry' has no attribute {name!r}"
        raise AttributeError(msg)
    import importlib

    return getattr(importlib.import_module(f"amebus.telemetry.{module}"), name)
