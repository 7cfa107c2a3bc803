"""Text that is safe on the wire and in logs: the one place where amebus turns any value
(an exception, a handler's reason, a header value) into printable, UTF-8-encodable text.

A handler's text is hostile input: a payload field decoded from JSON may hold a lone
surrogate (``"\\ud800"`` decodes fine, encoding it to UTF-8 raises), control characters
(CR, LF, ESC, NUL: log injection, broken header lines), or be megabytes long; and an
exception's ``__str__`` may itself raise or return a non-str.
"""

from __future__ import annotations

__all__ = ["describe", "safe_text", "text_of"]

DEFAULT_LIMIT = 300
"""Characters kept by default (term reasons, ``Amebus-Error``, log lines)."""


def text_of(value: object) -> str:
    """``str(value)`` that never fails: when ``__str__`` raises or returns a non-str, the
    type name and ``(str() failed)``; the result is an exact ``str`` (no subclass)."""
    text = _str(value)
    return f"{_type_name(value)} (str() failed)" if text is None else text


def _str(value: object) -> str | None:
    if type(value) is str:
        return value
    try:
        # str() refuses a non-str from __str__ (TypeError); a str subclass is copied exact.
        return str.__str__(str(value))
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException:  # any __str__ failure, even a CancelledError raised by it
        return None


def describe(value: object) -> str:
    """An exception as ``TypeName: message`` (just ``TypeName`` without a message); any other
    value as its text. Never fails; not yet made safe (see :func:`safe_text`)."""
    if isinstance(value, BaseException):
        name = _type_name(value)
        message = _str(value)
        if message is None:
            return f"{name} (str() failed)"
        return f"{name}: {message}" if message else name
    return text_of(value)


def safe_text(value: object, limit: int | None = DEFAULT_LIMIT, *, collapse: bool = True) -> str:
    """``value`` (see :func:`describe`) as one line that can be encoded and logged safely.

    Runs of whitespace become one space (with ``collapse``; else only CR, LF and other line
    breaks are escaped), every other non-printable character (control characters, lone
    surrogates, bidirectional overrides, unassigned code points) is escaped as ``\\xNN``,
    ``\\uNNNN`` or ``\\UNNNNNNNN``, and the text is cut to ``limit`` characters, ending in
    ``...`` when cut (``None``: no cut). Printable text passes unchanged.
    """
    text = describe(value)
    if limit is not None and len(text) > 4 * limit + 16:
        text = text[: 4 * limit + 16]  # bound the work on a huge message before escaping
    if collapse:
        text = " ".join(text.split())
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def _escape(char: str) -> str:
    point = ord(char)
    if point < 0x100:
        return f"\\x{point:02x}"
    if point < 0x10000:
        return f"\\u{point:04x}"
    return f"\\U{point:08x}"


def _type_name(value: object) -> str:
    name = getattr(type(value), "__name__", "object")
    return name if type(name) is str and name.isprintable() else "object"
