"""The subject grammar of ``amebus.subjects``, one test class per rule of the spec.

``matches`` is checked against a regular expression built from the pattern; ``covers`` and
``intersects`` against a brute-force search over a complete, finite set of witness subjects.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    FORBIDDEN_CHARS,
    grammar_tokens,
    literal_subjects,
    message_subjects,
    patterns,
    prefixes,
    regex_matches,
    subjects_for,
    subjects_near,
    witness_subjects,
)

from amebus import AmebusError, SubjectError
from amebus.subjects import (
    covers,
    intersects,
    is_literal,
    join,
    matches,
    validate_literal,
    validate_pattern,
    validate_subject,
    validate_token,
)

VALIDATORS: list[Callable[[str], object]] = [validate_subject, validate_literal, validate_pattern]


# -- oracles --------------------------------------------------------------------------------

oracle_matches = regex_matches


def oracle_covers(general: str, specific: str) -> bool:
    return all(oracle_matches(general, subject) for subject in witness_subjects(general, specific)
               if oracle_matches(specific, subject))


def oracle_intersects(a: str, b: str) -> bool:
    return any(oracle_matches(a, subject) and oracle_matches(b, subject)
               for subject in witness_subjects(a, b))


def toks(text: str) -> tuple[str, ...]:
    return tuple(text.split("."))


def _insert(parts: tuple[list[str], int, str]) -> str:
    """Insert ``item`` into the joined tokens at character position ``index``."""
    tokens, index, item = parts
    text = ".".join(tokens)
    at = index % (len(text) + 1)
    return text[:at] + item + text[at:]


def _insert_token(parts: tuple[list[str], int, str]) -> str:
    tokens, index, item = parts
    at = index % (len(tokens) + 1)
    return ".".join([*tokens[:at], item, *tokens[at:]])


token_lists = st.lists(grammar_tokens(), min_size=1, max_size=5)
with_empty_token = st.tuples(st.lists(grammar_tokens(), max_size=4), st.integers(0, 10),
                             st.just("")).map(_insert_token)
with_bad_char = st.tuples(token_lists, st.integers(0, 50),
                          st.sampled_from(FORBIDDEN_CHARS)).map(_insert)


# -- the grammar ----------------------------------------------------------------------------

class TestTokens:
    """Rule: a subject is tokens separated by '.'; every token is non-empty."""

    @given(token_lists)
    def test_valid_tokens_round_trip(self, tokens: list[str]) -> None:
        text = ".".join(tokens)
        assert validate_subject(text) == text
        assert validate_literal(text) == text
        assert validate_pattern(text) == tuple(tokens)
        assert join(*tokens) == text

    @given(with_empty_token)
    @pytest.mark.parametrize("validate", VALIDATORS)
    def test_an_empty_token_is_refused_quoting_the_input(self, validate: Callable[[str], object],
                                                         text: str) -> None:
        with pytest.raises(SubjectError) as info:
            validate(text)
        assert repr(text) in str(info.value)
        assert "empty" in str(info.value)

    @pytest.mark.parametrize("text", [".a", "a.", "a..b", "."])
    def test_the_message_names_the_rule(self, text: str) -> None:
        with pytest.raises(SubjectError, match=r"empty token.*every token between dots"):
            validate_subject(text)

    def test_the_empty_subject_is_refused(self) -> None:
        with pytest.raises(SubjectError, match=r"subject '' is empty; give at least one token"):
            validate_subject("")

    @pytest.mark.parametrize("value", [None, 3, b"order.paid", ("order", "paid")])
    def test_a_non_str_is_refused(self, value: object) -> None:
        with pytest.raises(SubjectError, match="must be a str"):
            validate_subject(value)  # type: ignore[arg-type]

    def test_subject_error_is_a_value_error(self) -> None:
        assert issubclass(SubjectError, ValueError)
        assert issubclass(SubjectError, AmebusError)


class TestForbiddenCharacters:
    """Rule: no token holds whitespace (space, tab, CR, LF, FF), NUL, or (amebus's one stricter
    rule, for nats-py's parser) a vertical tab."""

    @given(with_bad_char)
    @pytest.mark.parametrize("validate", VALIDATORS)
    def test_refused_anywhere_quoting_the_input(self, validate: Callable[[str], object],
                                                text: str) -> None:
        with pytest.raises(SubjectError) as info:
            validate(text)
        message = str(info.value)
        assert repr(text) in message
        assert "whitespace or NUL" in message

    @pytest.mark.parametrize(("char", "name"), [(" ", "a space"), ("\t", "a tab"),
                                                ("\r", "a CR"), ("\n", "a LF"),
                                                ("\f", "a form feed"), ("\v", "a vertical tab"),
                                                ("\x00", "a NUL byte")])
    def test_the_message_names_the_character_and_its_index(self, char: str, name: str) -> None:
        with pytest.raises(SubjectError, match=f"contains {name} at index 6"):
            validate_subject(f"order.{char}paid")
        with pytest.raises(SubjectError, match=f"contains {name}"):
            validate_token(f"x{char}")

    @pytest.mark.parametrize("text", ["a\u00a0b", "ordre.payée", "a\u2003b"])
    def test_other_characters_are_allowed_as_by_the_server(self, text: str) -> None:
        assert validate_subject(text) == text


class TestCaseSensitiveExactMatch:
    """Rule: a literal pattern matches exactly the subject spelled the same, case included."""

    @given(token_lists, token_lists)
    def test_a_literal_pattern_matches_only_itself(self, pattern: list[str],
                                                   subject: list[str]) -> None:
        assert matches(pattern, subject) == (pattern == subject)

    def test_case_matters(self) -> None:
        assert not matches(toks("Order.paid"), toks("order.paid"))
        assert not matches(toks("order.*"), toks("ORDER.paid"))


class TestWildcardsAreWholeTokens:
    """Rule: in a pattern, ``*`` and ``>`` are wildcards only as whole tokens (``foo*`` is a
    literal)."""

    @pytest.mark.parametrize("token", ["foo*", "*foo", "**", ">>", "a>", "*>"])
    def test_a_token_holding_a_wildcard_char_is_a_literal(self, token: str) -> None:
        assert is_literal((token,))
        assert matches(("order", token), ("order", token))
        assert not matches(("order", token), ("order", "fooz"))

    @given(patterns())
    def test_is_literal_means_no_wildcard_token(self, pattern: str) -> None:
        assert is_literal(toks(pattern)) == (not {"*", ">"} & set(toks(pattern)))


class TestSingleTokenWildcard:
    """Rule: ``*`` matches exactly one token."""

    @given(st.lists(grammar_tokens(), min_size=1, max_size=4), st.integers(0, 3))
    def test_star_matches_one_token_not_zero_or_two(self, subject: list[str],
                                                    index: int) -> None:
        at = index % len(subject)
        pattern = [*subject[:at], "*", *subject[at + 1:]]
        assert matches(pattern, subject)
        assert not matches(pattern, [*subject[:at], *subject[at + 1:]])
        assert not matches(pattern, [*subject[:at], "x", "y", *subject[at + 1:]])


class TestFullWildcard:
    """Rule: ``>`` matches one or more trailing tokens and may only be the last token
    (``order.>`` does not match ``order``)."""

    def test_one_or_more_trailing_tokens(self) -> None:
        assert not matches(toks("order.>"), toks("order"))
        assert matches(toks("order.>"), toks("order.paid"))
        assert matches(toks("order.>"), toks("order.paid.eu.1"))
        assert matches(toks(">"), toks("anything.at.all"))

    @given(st.lists(grammar_tokens(), min_size=1, max_size=5), st.integers(0, 4))
    def test_matches_every_subject_at_least_one_longer(self, subject: list[str],
                                                       cut: int) -> None:
        at = cut % len(subject)
        assert matches([*subject[:at], ">"], subject)
        assert not matches([*subject, ">"], subject)

    @given(st.tuples(st.lists(grammar_tokens(), min_size=1, max_size=4), st.integers(0, 10),
                     st.just(">")).map(lambda p: (p[0], p[1] % len(p[0]), p[2]))
           .map(_insert_token))
    def test_not_last_is_refused_quoting_the_pattern(self, text: str) -> None:
        with pytest.raises(SubjectError) as info:
            validate_pattern(text)
        assert repr(text) in str(info.value)
        assert "must be the last token" in str(info.value)

    @given(st.tuples(prefixes(), st.sampled_from([">", ">.x", "*.>"]))
           .map(lambda parts: ".".join(parts)))
    def test_a_prefix_refuses_it_anywhere(self, text: str) -> None:
        with pytest.raises(SubjectError, match="may only end a route's own pattern"):
            validate_pattern(text, allow_tail=False)

    def test_a_prefix_accepts_star(self) -> None:
        assert validate_pattern("order.*", allow_tail=False) == ("order", "*")


class TestWildcardTokensInSubjects:
    """Rule: a message subject may hold literal ``*`` and ``>`` tokens: pattern ``order.*``
    matches subject ``order.*``; pattern ``order.paid`` does not."""

    def test_the_seed_examples(self) -> None:
        assert matches(toks("order.*"), toks("order.*"))
        assert not matches(toks("order.paid"), toks("order.*"))
        assert matches(toks("order.>"), toks("order.>"))
        assert matches(toks("order.*"), toks("order.>"))
        assert matches(toks("order.>"), toks("order.>.x"))

    @given(message_subjects())
    def test_any_such_subject_is_valid(self, subject: str) -> None:
        assert validate_subject(subject) == subject

    @given(st.lists(grammar_tokens(), min_size=1, max_size=3), st.sampled_from(["*", ">"]))
    def test_no_literal_pattern_matches_them(self, tokens: list[str], wildcard: str) -> None:
        assert not matches(tokens, [*tokens[:-1], wildcard])

    @given(st.tuples(st.lists(grammar_tokens(), max_size=3), st.integers(0, 5),
                     st.sampled_from(["*", ">"])).map(_insert_token))
    def test_a_published_subject_must_be_literal(self, text: str) -> None:
        with pytest.raises(SubjectError, match=r"contains the wildcard .* must be literal"):
            validate_literal(text)


class TestValidateToken:
    """Rule: one token of a published subject is non-empty, literal, and holds no '.'."""

    @given(grammar_tokens())
    def test_any_literal_token_passes(self, token: str) -> None:
        assert validate_token(token) == token

    @pytest.mark.parametrize(("token", "reason"), [
        ("1.*", "contains '.'"), ("a.b", "contains '.'"), ("", "is empty"),
        ("*", "is a wildcard"), (">", "is a wildcard"), ("a b", "contains a space"),
        (7, "must be a str"),
    ])
    def test_refusals_quote_the_token(self, token: object, reason: str) -> None:
        with pytest.raises(SubjectError, match=re.escape(reason)) as info:
            validate_token(token)
        assert repr(token) in str(info.value)


class TestJoin:
    """``join`` glues subject parts with '.', skipping empty parts (a prefix-less Router)."""

    def test_examples(self) -> None:
        assert join("order", "paid.*") == "order.paid.*"
        assert join("", "order", "", "paid") == "order.paid"
        assert join() == ""

    @given(st.lists(patterns(), max_size=4))
    def test_join_is_concatenation_of_tokens(self, parts: list[str]) -> None:
        assert join(*parts) == ".".join(parts)
        assert join("", *parts, "") == ".".join(parts)


# -- matching, coverage and intersection against oracles ----------------------------------

class TestMatches:
    """Rule: ``*`` is one token, ``>`` one or more trailing tokens, anything else is literal;
    checked against the pattern translated to a regular expression."""

    @given(st.data())
    def test_agrees_with_the_regex_oracle(self, data: st.DataObject) -> None:
        pattern = data.draw(patterns(), label="pattern")
        subject = data.draw(subjects_near([pattern]), label="subject")
        assert matches(toks(pattern), toks(subject)) == oracle_matches(pattern, subject)

    @given(patterns().flatmap(lambda p: st.tuples(st.just(p), subjects_for(p))))
    def test_every_filled_in_pattern_matches(self, case: tuple[str, str]) -> None:
        pattern, subject = case
        assert matches(toks(pattern), toks(subject))


class TestCovers:
    """``covers(g, s)``: every subject ``s`` matches, ``g`` matches too; checked by brute force
    over a complete set of witness subjects."""

    @given(patterns(), patterns())
    def test_agrees_with_the_brute_force_oracle(self, general: str, specific: str) -> None:
        assert covers(toks(general), toks(specific)) == oracle_covers(general, specific)

    @given(patterns().flatmap(lambda p: st.tuples(st.just(p), patterns(), subjects_for(p))))
    def test_sound_on_sampled_subjects(self, case: tuple[str, str, str]) -> None:
        specific, general, subject = case
        if covers(toks(general), toks(specific)):
            assert oracle_matches(general, subject)

    @given(patterns())
    def test_reflexive(self, pattern: str) -> None:
        assert covers(toks(pattern), toks(pattern))

    @given(patterns(), patterns())
    def test_antisymmetric(self, a: str, b: str) -> None:
        if covers(toks(a), toks(b)) and covers(toks(b), toks(a)):
            assert a == b

    @pytest.mark.parametrize(("general", "specific", "expected"), [
        ("order.>", "order.*", True), ("order.*", "order.>", False), (">", "a.>", True),
        ("order.*", "order.paid", True), ("order.paid", "order.*", False),
        ("*.paid", "order.*", False), ("order.>", "order", False), ("a.*.>", "a.>", False),
    ])
    def test_examples(self, general: str, specific: str, expected: bool) -> None:
        assert covers(toks(general), toks(specific)) is expected
        assert oracle_covers(general, specific) is expected


class TestIntersects:
    """``intersects(a, b)``: some subject matches both; checked by brute force."""

    @given(patterns(), patterns())
    def test_agrees_with_the_brute_force_oracle(self, a: str, b: str) -> None:
        assert intersects(toks(a), toks(b)) == oracle_intersects(a, b)

    @given(patterns(), patterns())
    def test_symmetric_and_implied_by_covers(self, a: str, b: str) -> None:
        assert intersects(toks(a), toks(b)) == intersects(toks(b), toks(a))
        if covers(toks(a), toks(b)):
            assert intersects(toks(a), toks(b))

    @given(patterns(), literal_subjects())
    def test_with_a_literal_pattern_it_is_matching(self, pattern: str, subject: str) -> None:
        assert intersects(toks(pattern), toks(subject)) == oracle_matches(pattern, subject)

    @pytest.mark.parametrize(("a", "b", "expected"), [
        ("order.*.eu", "order.paid.*", True), ("order.>", "order", False),
        ("*.*", "a.>", True), ("a.*", "a.*.*", False), ("a.b", "a.c", False),
    ])
    def test_examples(self, a: str, b: str, expected: bool) -> None:
        assert intersects(toks(a), toks(b)) is expected
        assert oracle_intersects(a, b) is expected
