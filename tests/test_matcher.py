"""The trie of ``amebus.matcher`` against an oracle: filter every pattern that matches by regular
expression, sort by an explicit token-by-token comparison, take the first.
"""

from __future__ import annotations

import functools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    patterns,
    prefixes,
    regex_matches,
    route_sets,
    subjects_for,
    subjects_near,
)

from amebus.matcher import Matcher
from amebus.subjects import specificity

oracle_matches = regex_matches


def _rank(token: str) -> int:
    return {"*": 1, ">": 2}.get(token, 0)


def compare(a: str, b: str) -> int:
    """Negative if ``a`` is more specific than ``b``, two patterns matching one subject: from the
    left, at the first differing token a literal beats ``*`` and ``*`` beats ``>``."""
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            assert _rank(x) != _rank(y), f"{a!r} and {b!r} cannot match one subject"
            return _rank(x) - _rank(y)
    raise AssertionError(f"{a!r} and {b!r} cannot both match one subject")


def oracle_resolve(routes: list[str], subject: str) -> str | None:
    candidates = sorted((p for p in routes if oracle_matches(p, subject)),
                        key=functools.cmp_to_key(compare))
    if len(candidates) > 1:
        assert compare(candidates[0], candidates[1]) < 0, "the winner must be unique"
    return candidates[0] if candidates else None


def matcher_of(routes: list[str]) -> Matcher[str]:
    return Matcher((tuple(pattern.split(".")), pattern) for pattern in routes)


def routes_and_subjects(max_size: int = 8) -> st.SearchStrategy[tuple[list[str], list[str]]]:
    """A route set and subjects that often match its routes."""
    return route_sets(max_size=max_size).flatmap(
        lambda routes: st.tuples(st.just(routes),
                                 st.lists(subjects_near(routes), min_size=1, max_size=20)))


class TestMostSpecificWins:
    """Rule: compare patterns token by token from the left; at the first differing position a
    literal beats ``*``, ``*`` beats ``>``; the winner is unique."""

    @given(routes_and_subjects())
    def test_the_trie_agrees_with_the_oracle(self, case: tuple[list[str], list[str]]) -> None:
        routes, subjects = case
        matcher = matcher_of(routes)
        for subject in subjects:
            assert matcher.match(subject) == oracle_resolve(routes, subject), subject

    @given(routes_and_subjects())
    def test_the_specificity_key_puts_the_winner_first(
            self, case: tuple[list[str], list[str]]) -> None:
        routes, subjects = case
        for subject in subjects:
            candidates = [p for p in routes if oracle_matches(p, subject)]
            if candidates:
                best = min(candidates, key=lambda p: specificity(p.split(".")))
                assert best == oracle_resolve(routes, subject)

    @pytest.mark.parametrize(("subject", "routes", "winner"), [
        ("order.paid", ["order.*", "order.paid", "order.>"], "order.paid"),
        ("order.eu", ["order.*", "order.>", ">"], "order.*"),
        ("order.eu.paid", ["order.>", "*.eu.paid", "order.*.paid"], "order.*.paid"),
        ("order.eu.paid", ["order.*.>", "order.>"], "order.*.>"),
        ("order.paid.1", ["order.paid.*", "order.*.1", "*.paid.1"], "order.paid.*"),
        ("order", ["order.>", "*"], "*"),
        ("order", ["order.>"], None),
        ("order.*", ["order.paid", "order.*"], "order.*"),
        ("order.*", ["order.paid"], None),
    ])
    def test_examples(self, subject: str, routes: list[str], winner: str | None) -> None:
        assert matcher_of(routes).match(subject) == winner
        assert oracle_resolve(routes, subject) == winner

    def test_the_docstring_example(self) -> None:
        m = Matcher([(("order", ">"), "any"), (("order", "*", "paid"), "paid")])
        assert (m.match("order.eu.paid"), m.match("order.eu"), m.match("order")) == (
            "paid", "any", None)


class TestAddingARoute:
    """Adding a route never changes the result for subjects it does not match; for those it
    matches, the result is the new route or the old one."""

    @given(route_sets(min_size=2).flatmap(
        lambda routes: st.tuples(st.just(routes), st.lists(subjects_near(routes), max_size=20))))
    def test_only_subjects_it_matches_can_change(
            self, case: tuple[list[str], list[str]]) -> None:
        routes, subjects = case
        *before, added = routes
        old, new = matcher_of(before), matcher_of(routes)
        for subject in subjects:
            if oracle_matches(added, subject):
                assert new.match(subject) in (old.match(subject), added)
            else:
                assert new.match(subject) == old.match(subject)


class TestMounting:
    """Mounting every route under a prefix shifts every match by the prefix."""

    @given(st.data())
    def test_a_prefix_shifts_every_match(self, data: st.DataObject) -> None:
        routes, subjects = data.draw(routes_and_subjects(), label="routes, subjects")
        prefix = data.draw(prefixes(), label="prefix")
        mounted = matcher_of([f"{prefix}.{p}" for p in routes])
        plain = matcher_of(routes)
        for subject in subjects:
            head = data.draw(subjects_for(prefix), label="prefix subject")
            expected = plain.match(subject)
            found = mounted.match(f"{head}.{subject}")
            assert found == (None if expected is None else f"{prefix}.{expected}")
            assert mounted.match(head) is None


class TestInsertionOrder:
    """The result is independent of the order the routes were added in."""

    @given(routes_and_subjects().flatmap(
        lambda case: st.tuples(st.just(case), st.permutations(case[0]))))
    def test_any_permutation_resolves_the_same(
            self, case: tuple[tuple[list[str], list[str]], list[str]]) -> None:
        (routes, subjects), shuffled = case
        first, second = matcher_of(routes), matcher_of(shuffled)
        for subject in subjects:
            assert first.match(subject) == second.match(subject)


class TestAdd:
    """Each pattern is added once; ``order`` and ``order.>`` are different patterns."""

    @given(patterns())
    def test_a_pattern_added_twice_raises_key_error(self, pattern: str) -> None:
        matcher = matcher_of([pattern])
        with pytest.raises(KeyError, match=re.escape(pattern)):
            matcher.add(tuple(pattern.split(".")), "again")

    def test_end_and_tail_at_one_node_coexist(self) -> None:
        matcher = matcher_of(["order", "order.>", "order.*"])
        assert [matcher.match(s) for s in ("order", "order.x", "order.x.y")] == [
            "order", "order.*", "order.>"]

    def test_an_empty_matcher_matches_nothing(self) -> None:
        assert Matcher[str]().match("order.paid") is None
