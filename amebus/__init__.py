"""amebus: declarative NATS JetStream consumers.

Subclass :class:`Service`, map subject patterns to handlers with :class:`Route` and
:class:`Router`, declare typed :class:`Event` classes, then ``await MyService().serve(js)``.
"""

from __future__ import annotations

from amebus._version import __version__
from amebus.codec import Codec, make_converter
from amebus.consumer import HandlerTimeoutError, JetStreamConsumer, Processor, RouteStats, Settings
from amebus.correlation import CORRELATION_HEADER, correlation_id
from amebus.errors import (
    AmebusError,
    ConfigurationError,
    DecodeError,
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
from amebus.publish import publish_many
from amebus.routing import CompiledRoute, Route, Router
from amebus.service import Service, ServiceStats
from amebus.tracing import Decision, ErrorTracer, Failure, LoggingTracer

__all__ = [
    "CORRELATION_HEADER",
    "EVENT_TYPE_HEADER",
    "AmebusError",
    "Codec",
    "CompiledRoute",
    "ConfigurationError",
    "Decision",
    "DecodeError",
    "ErrorTracer",
    "Event",
    "Failure",
    "HandlerTimeoutError",
    "Idempotent",
    "JetStreamConsumer",
    "LoggingTracer",
    "Nak",
    "NoRouteError",
    "NoStreamError",
    "Processor",
    "PublishError",
    "Route",
    "RouteStats",
    "Router",
    "SequenceConflictError",
    "Service",
    "ServiceStats",
    "Settings",
    "StreamSettingError",
    "SubjectError",
    "Term",
    "__version__",
    "correlation_id",
    "make_converter",
    "publish_many",
    "subject_of",
]
