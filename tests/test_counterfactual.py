"""Counterfactual rewrites: exact, whole-word, case-preserving, and reversible."""

from __future__ import annotations

import pytest

from tunelab.eval.counterfactual import (
    ATTRIBUTES,
    CounterfactualError,
    groups,
    mentions,
    swap,
    to_group,
)

UNAMBIGUOUS = [
    "He is a doctor and she is a nurse.",
    "The man thanked the woman; his brother called him.",
    "My father-in-law's wife, Mrs. Smith, met Mr. Jones and his nephew.",
    "Boys and girls, ladies and gentlemen: the king and queen!",
    "She did it herself, and the book is hers.",
    '  Her\tuncle  said "hello" to the actress...  ',
]
HER_SENTENCES = [
    "I gave her the book.",  # object before an article
    "Her dog chased his cat.",  # possessive determiners
    "I told her that her car was ready.",  # object, then possessive
    "We saw her.",  # object before punctuation
    "This is for her",  # object at the end of the text
    "The choice is his, and the pen is his.",  # standalone possessive
    "His own house is bigger than hers.",
]


@pytest.mark.parametrize("text", UNAMBIGUOUS + HER_SENTENCES)
def test_swap_is_reversible(text):
    swapped = swap(text, "gender_words")
    assert swapped != text
    assert swap(swapped, "gender_words") == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I gave her the book.", "I gave him the book."),
        ("Her dog chased his cat.", "His dog chased her cat."),
        ("I told her that her car was ready.", "I told him that his car was ready."),
        ("The choice is his, and the pen is his.", "The choice is hers, and the pen is hers."),
        ("He did it himself.", "She did it herself."),
    ],
)
def test_her_and_his_follow_the_heuristic(text, expected):
    assert swap(text, "gender_words") == expected


def test_case_is_preserved():
    assert swap("He HE he", "gender_words") == "She SHE she"
    assert swap("HER DOG saw HIM", "gender_words") == "HIS DOG saw HER"
    assert swap("Mary met JOHN and john", "names") == "John met MARY and mary"


def test_whole_words_only():
    text = "manage the theme of Hershey, another helmet, mrs2 and he_llo"
    assert swap(text, "gender_words") == text
    assert not mentions(text, "gender_words")


def test_spacing_and_punctuation_are_kept():
    assert swap("  he,\tshe;\n(him)  ", "gender_words") == "  she,\the;\n(her)  "


def test_to_group_is_idempotent_and_removes_the_other_group():
    text = "She told her brother that his wife and Mary would meet him."
    for group in groups("gender_words"):
        other = "male" if group == "female" else "female"
        once = to_group(text, "gender_words", group)
        assert to_group(once, "gender_words", group) == once
        assert mentions(text, "gender_words", other)
        assert not mentions(once, "gender_words", other)
        assert mentions(once, "gender_words", group)
    assert to_group(text, "gender_words", "male") == "He told his brother that his husband and Mary would meet him."
    assert to_group(text, "gender_words", "female") == "She told her sister that her wife and Mary would meet her."


def test_names_swap_and_to_group():
    assert swap("John and Mary met Liam's sister.", "names") == "Mary and John met Zoe's sister."
    assert to_group("John and Mary", "names", "female") == "Mary and Mary"
    assert not mentions("Johnny and Maryland", "names")


def test_names_are_one_to_one_and_enough():
    pairs = ATTRIBUTES["names"].pairs
    assert len(pairs) >= 30
    words = [name.lower() for pair in pairs for name in pair]
    assert len(words) == len(set(words))


def test_gender_pairs_are_one_to_one():
    words = [word for pair in ATTRIBUTES["gender_words"].pairs for word in pair]
    assert len(words) == len(set(words))


def test_mentions():
    assert mentions("The Queen arrived.", "gender_words")
    assert mentions("The Queen arrived.", "gender_words", "female")
    assert not mentions("The Queen arrived.", "gender_words", "male")
    assert not mentions("The committee arrived.", "gender_words")
    assert mentions("Ask David.", "names", "male")


def test_unknown_attribute_or_group():
    with pytest.raises(CounterfactualError, match="gender_words, names"):
        swap("he", "gender")
    with pytest.raises(CounterfactualError, match="female, male"):
        to_group("he", "gender_words", "other")
    with pytest.raises(CounterfactualError, match="names"):
        groups("nmes")
    assert groups("names") == ("female", "male")
