"""NATS subject grammar: tokens, validation, wildcard matching and pattern coverage.

Pure functions on strings; the rules are the server's (``nats-server`` ``IsValidSubject``):

- a subject is tokens joined by ``.``; a token is non-empty and holds no ``.``, no space, tab,
  CR, LF or form feed, and no NUL; matching is exact and case-sensitive. One stricter rule: no
  vertical tab either (the server accepts it, but nats-py's parser splits a MSG line on it and
  drops the subscriber's connection);
- in a *pattern* ``*`` (one token) and ``>`` (one or more trailing tokens, last only) are
  wildcards when they are a whole token; ``foo*`` is a literal;
- in a *subject* ``*`` and ``>`` are plain tokens (JetStream stores such subjects).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from amebus.errors import SubjectError

__all__ = [
    "FWC",
    "PWC",
    "covers",
    "intersects",
    "is_literal",
    "join",
    "matches",
    "specificity",
    "validate_literal",
    "validate_pattern",
    "validate_subject",
    "validate_token",
]

PWC = "*"
"""The single-token wildcard."""
FWC = ">"
"""The full (tail) wildcard: one or more trailing tokens."""

_BAD_CHARS = re.compile(r"[ \t\r\n\f\v\x00]")
_CHAR_NAMES = {" ": "a space", "\t": "a tab", "\r": "a CR", "\n": "a LF", "\f": "a form feed",
               "\v": "a vertical tab", "\x00": "a NUL byte"}


def _check_tokens(kind: str, text: object) -> list[str]:
    if not isinstance(text, str):
        msg = f"{kind} must be a str, got {text!r} ({type(text).__name__})"
        raise SubjectError(msg)
    if text == "":
        msg = f"{kind} {text!r} is empty; give at least one token, like 'orders'"
        raise SubjectError(msg)
    bad = _BAD_CHARS.search(text)
    if bad:
        msg = (f"{kind} {text!r} contains {_CHAR_NAMES[bad.group()]} at index {bad.start()}; "
               f"tokens may not hold whitespace or NUL")
        raise SubjectError(msg)
    tokens = text.split(".")
    if "" in tokens:
        msg = (f"{kind} {text!r} has an empty token (a leading, trailing or doubled '.'); "
               f"every token between dots needs at least one character")
        raise SubjectError(msg)
    return tokens


def validate_subject(subject: str) -> str:
    """Return ``subject`` if it is a valid subject (``*`` and ``>`` are plain tokens here)."""
    _check_tokens("subject", subject)
    return subject


def validate_literal(subject: str) -> str:
    """Return ``subject`` if it is valid and has no wildcard token (a publishable subject)."""
    for token in _check_tokens("subject", subject):
        if token in (PWC, FWC):
            msg = (f"subject {subject!r} contains the wildcard {token!r}; a published subject "
                   f"must be literal (use subject_pattern for the pattern an event follows)")
            raise SubjectError(msg)
    return subject


def validate_pattern(pattern: str, *, allow_tail: bool = True) -> tuple[str, ...]:
    """Return the tokens of ``pattern`` if it is a valid subscription pattern.

    ``allow_tail=False`` rejects ``>`` (router prefixes may hold ``*`` but not ``>``).

    >>> validate_pattern("order.*.paid")
    ('order', '*', 'paid')
    """
    tokens = _check_tokens("pattern", pattern)
    for index, token in enumerate(tokens):
        if token == FWC and not allow_tail:
            msg = (f"prefix {pattern!r} contains '>'; '>' may only end a route's own pattern, "
                   f"not a router prefix")
            raise SubjectError(msg)
        if token == FWC and index != len(tokens) - 1:
            msg = (f"pattern {pattern!r} has '>' at token {index + 1} of {len(tokens)}; "
                   f"'>' matches the rest of a subject and must be the last token")
            raise SubjectError(msg)
    return tuple(tokens)


def validate_token(token: object) -> str:
    """Return ``token`` if it can stand as one literal token of a published subject.

    This is the defence against subject injection: ``"1.*"`` is refused, not split.
    """
    if not isinstance(token, str):
        msg = f"subject token must be a str, got {token!r} ({type(token).__name__}); convert it"
        raise SubjectError(msg)
    if token == "":
        msg = "subject token '' is empty; every token needs at least one character"
        raise SubjectError(msg)
    if "." in token:
        msg = (f"subject token {token!r} contains '.'; a token is one level of a subject, "
               f"so a value with dots would publish to a different subject")
        raise SubjectError(msg)
    bad = _BAD_CHARS.search(token)
    if bad:
        msg = f"subject token {token!r} contains {_CHAR_NAMES[bad.group()]}; tokens may not"
        raise SubjectError(msg)
    if token in (PWC, FWC):
        msg = f"subject token {token!r} is a wildcard; a published subject must be literal"
        raise SubjectError(msg)
    return token


def join(*parts: str) -> str:
    """Join non-empty subject parts with ``.`` (``join("order", "paid.*") == "order.paid.*"``)."""
    return ".".join(part for part in parts if part)


def is_literal(pattern: Sequence[str]) -> bool:
    """True if the pattern tokens hold no wildcard."""
    return PWC not in pattern and FWC not in pattern


def matches(pattern: Sequence[str], subject: Sequence[str]) -> bool:
    """True if the pattern tokens match the subject tokens (a subject's ``*`` is literal)."""
    for index, token in enumerate(pattern):
        if token == FWC:
            return len(subject) > index
        if index >= len(subject) or (token != PWC and token != subject[index]):
            return False
    return len(pattern) == len(subject)


def covers(general: Sequence[str], specific: Sequence[str]) -> bool:
    """True if every subject matched by ``specific`` is also matched by ``general``."""
    for index, token in enumerate(general):
        if index >= len(specific):
            return False
        other = specific[index]
        if token == FWC:
            return True
        if other == FWC or (token != PWC and (other == PWC or other != token)):
            return False
    return len(general) == len(specific)


def intersects(a: Sequence[str], b: Sequence[str]) -> bool:
    """True if at least one subject is matched by both patterns."""
    for index in range(max(len(a), len(b))):
        if index >= len(a) or index >= len(b):
            return False
        x, y = a[index], b[index]
        if FWC in (x, y):
            return True
        if PWC not in (x, y) and x != y:
            return False
    return True


_KIND = {PWC: 1, FWC: 2}


def specificity(pattern: Iterable[str]) -> tuple[int, ...]:
    """Sort key for precedence: smaller is more specific (literal 0, ``*`` 1, ``>`` 2 per token).

    Two different patterns matching one subject differ in kind at their first differing token,
    so sorting matching patterns by this key puts the unique winner first.
    """
    return tuple(_KIND.get(token, 0) for token in pattern)
