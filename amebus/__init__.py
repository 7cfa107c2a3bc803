"""amebus: declarative NATS JetStream consumers.

Subclass :class:`Service`, map subject patterns to handlers with :class:`Route` and
:class:`Router`, declare typed :class:`Event` classes, then ``await MyService().serve(js)``.

``__all__`` holds what a service author needs: declaring, the handler signals, the errors,
the tracer hooks and publishing. The runtime's parts are importable from their modules
(:class:`amebus.consumer.JetStreamConsumer`, :class:`amebus.settlement.Settings`, ...); the
names of the earlier top level still resolve here too.
"""

from __future__ import annotations

import importlib
from typing import Any

from amebus._version import __version__
from amebus.batching import Batch
from amebus.codec import make_converter
from amebus.correlation import CORRELATION_HEADER, correlation_id
from amebus.errors import (
    AmebusError,
    AttemptsExhaustedError,
    BatchPublishError,
    ConfigurationError,
    DecodeError,
    HandlerTimeoutError,
    Nak,
    NoRouteError,
    NoStreamError,
    PublishError,
    SequenceConflictError,
    StreamSettingError,
    SubjectError,
    Term,
)
from amebus.events import EVENT_TYPE_HEADER, Event, subject_of
from amebus.idempotency import Idempotent
from amebus.priority import Overflow
from amebus.publish import publish_many
from amebus.routing import Route, Router
from amebus.service import Service, ServiceStats
from amebus.tracing import Decision, ErrorTracer, Failure, LoggingTracer

__all__ = [
    "CORRELATION_HEADER",
    "EVENT_TYPE_HEADER",
    "AmebusError",
    "AttemptsExhaustedError",
    "Batch",
    "BatchPublishError",
    "ConfigurationError",
    "Decision",
    "DecodeError",
    "ErrorTracer",
    "Event",
    "Failure",
    "HandlerTimeoutError",
    "Idempotent",
    "LoggingTracer",
    "Nak",
    "NoRouteError",
    "NoStreamError",
    "Overflow",
    "PublishError",
    "Route",
    "Router",
    "SequenceConflictError",
    "Service",
    "ServiceStats",
    "StreamSettingError",
    "SubjectError",
    "Term",
    "__version__",
    "correlation_id",
    "make_converter",
    "publish_many",
    "subject_of",
]

_ELSEWHERE = {
    "Codec": "amebus.codec",
    "CompiledRoute": "amebus.routing",
    "JetStreamConsumer": "amebus.consumer",
    "Processor": "amebus.handlers",
    "RouteStats": "amebus.settlement",
    "Settings": "amebus.settlement",
}
"""Names of the earlier top level that now live only in their modules."""


def __getattr__(name: str) -> Any:
    module = _ELSEWHERE.get(name)
    if module is None:
        msg = f"module 'amebus' has no attribute {name!r}"
        raise AttributeError(msg)
    return getattr(importlib.import_module(module), name)
