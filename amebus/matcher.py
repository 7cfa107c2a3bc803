"""A subject trie: compile patterns once, resolve a subject to its most specific pattern's value.

Knows nothing about handlers. At each token the literal child is tried before ``*`` and ``*``
before ``>``, with backtracking, so the first match found is the most specific one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Generic, TypeVar

from amebus.subjects import FWC, PWC, is_literal

__all__ = ["Matcher"]

T = TypeVar("T")


class _Node(Generic[T]):
    __slots__ = ("end", "literal", "star", "tail")

    def __init__(self) -> None:
        self.literal: dict[str, _Node[T]] = {}
        self.star: _Node[T] | None = None
        self.end: T | None = None  # a pattern ends exactly here
        self.tail: T | None = None  # a pattern ends here with '>'


class Matcher(Generic[T]):
    """Maps subject patterns (token tuples) to values; ``match`` returns the most specific.

    >>> m = Matcher([(("order", ">"), "any"), (("order", "*", "paid"), "paid")])
    >>> m.match("order.eu.paid"), m.match("order.eu"), m.match("order")
    ('paid', 'any', None)
    """

    def __init__(self, entries: Iterable[tuple[Sequence[str], T]] = (), *,
                 hostile: T | None = None) -> None:
        """``hostile``: the value for a subject no pattern can mean (control characters, or
        bytes that were not UTF-8), whatever the patterns; by default None."""
        self.hostile = hostile
        self._root: _Node[T] = _Node()
        self._exact: dict[str, T] = {}
        for pattern, value in entries:
            self.add(pattern, value)

    def add(self, pattern: Sequence[str], value: T) -> None:
        """Add a validated pattern; a pattern added twice raises ``KeyError``."""
        node = self._root
        for token in pattern[:-1] if pattern[-1] == FWC else pattern:
            if token == PWC:
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                node = node.literal.setdefault(token, _Node())
        slot = "tail" if pattern[-1] == FWC else "end"
        if getattr(node, slot) is not None:
            raise KeyError(".".join(pattern))
        setattr(node, slot, value)
        if is_literal(pattern):
            self._exact[".".join(pattern)] = value

    def match(self, subject: str) -> T | None:
        """Return the value of the most specific pattern matching ``subject``, or None."""
        exact = self._exact.get(subject)
        if exact is not None:
            return exact
        if not subject.isprintable() and _hostile(subject):
            return self.hostile  # not even under a wildcard: no publisher of ours wrote it
        return _search(self._root, subject.split("."), 0)


def _hostile(subject: str) -> bool:
    """A control character, or bytes that were not UTF-8 (escaped as lone surrogates by the
    connection's parser, amebus._natsio)."""
    return any(ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff" for ch in subject)


def _search(node: _Node[T], tokens: list[str], index: int) -> T | None:
    # Walk down while there is one way to go; recurse only where a later step could fail
    # and a less specific alternative (``*`` or ``>``) must then be tried.
    end = len(tokens)
    while index < end:
        child = node.literal.get(tokens[index])
        star, tail = node.star, node.tail
        if child is not None:
            if star is None and tail is None:
                node, index = child, index + 1
                continue
            found = _search(child, tokens, index + 1)
            if found is not None:
                return found
        if star is not None:
            if tail is None:
                node, index = star, index + 1
                continue
            found = _search(star, tokens, index + 1)
            if found is not None:
                return found
        return tail
    return node.end
