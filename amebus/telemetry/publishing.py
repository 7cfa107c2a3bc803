"""The publish hook: observers of ``Event.publish``, ``publish_many`` and result events.

Publishing is not tied to a serving service, so publish observers are process-wide:
:func:`add_publish_observer` installs one (metrics, tracing), ``publish.py`` reads
:data:`current` once per call, and with none installed it is ``None`` and nothing is called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

__all__ = ["PublishDone", "PublishObserver", "add_publish_observer", "current",
           "remove_publish_observer"]

PublishDone = Callable[[BaseException | None], None]
"""Called once when the publish call ends: with None on success, else the error raised."""


class PublishObserver(Protocol):
    """Told about each publish call before anything is sent."""

    def publish_started(self, subjects: Sequence[str],
                        headers: Sequence[dict[str, str]]) -> PublishDone:
        """The call publishes one event per subject; ``headers`` may be extended (trace
        context) and are sent as they are when this returns. Return what to call at the end."""


class _All:
    def __init__(self, observers: tuple[PublishObserver, ...]) -> None:
        self.observers = observers

    def publish_started(self, subjects: Sequence[str],
                        headers: Sequence[dict[str, str]]) -> PublishDone:
        dones = [o.publish_started(subjects, headers) for o in self.observers]

        def done(error: BaseException | None) -> None:
            for each in reversed(dones):
                each(error)

        return done


current: PublishObserver | None = None
"""What ``publish.py`` calls; None when nothing is installed."""

_installed: list[PublishObserver] = []


def add_publish_observer(observer: PublishObserver) -> None:
    """Install ``observer`` for every publish of this process (again: no effect)."""
    if not any(o is observer for o in _installed):
        _installed.append(observer)
    _update()


def remove_publish_observer(observer: PublishObserver) -> None:
    """Uninstall ``observer`` (not installed: no effect)."""
    _installed[:] = [o for o in _installed if o is not observer]
    _update()


def _update() -> None:
    global current
    if not _installed:
        current = None
    elif len(_installed) == 1:
        current = _installed[0]
    else:
        current = _All(tuple(_installed))
