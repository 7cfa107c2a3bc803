"""The terminal of ``amebus run``: log lines above an in-place status line, and standard
output that never runs into it."""

from __future__ import annotations

import logging
from typing import Any, TextIO

__all__ = ["AboveStatus", "Console"]


class Console(logging.StreamHandler[TextIO]):
    """A log handler that keeps an in-place status line (on a terminal) below the log."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__(stream)
        self.status = ""
        self.held = False
        """Standard output is in the middle of a line: the status line waits for its end."""

    def emit(self, record: logging.LogRecord) -> None:
        if self.status:
            self.stream.write("\r\x1b[K")
        super().emit(record)
        if self.status:
            self.stream.write(self.status)
            self.flush()

    def show(self, line: str) -> None:
        self.status = line
        if self.held:
            return
        self._write("\r\x1b[K" + line)

    def end(self) -> None:
        if self.status:
            self.status = ""
            self._write("\n")

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.flush()
        except (OSError, ValueError):  # the terminal hung up: nothing more to show
            self.status = ""


class AboveStatus:
    """Standard output on the terminal of a :class:`Console`: what a handler prints lands on
    its own line above the status line, never appended to it."""

    def __init__(self, stream: TextIO, console: Console) -> None:
        self._stream, self._console = stream, console

    def write(self, text: str) -> int:
        console = self._console
        if not text:
            return 0
        if console.status and not console.held:  # at a line start: take the status line away
            console.stream.write("\r\x1b[K")
            console.flush()
        count = self._stream.write(text)
        self._stream.flush()
        console.held = not text.endswith("\n")  # mid-line: no status line until it ends
        if console.status and not console.held:
            console.stream.write(console.status)
            console.flush()
        return count

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
