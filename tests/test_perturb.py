"""Seeded perturbations: reproducible, targeted, and leaving everything else byte for byte."""

from __future__ import annotations

import re

import pytest

from tunelab.eval.perturb import (
    KEYBOARD_NEIGHBOURS,
    PERTURBATIONS,
    PerturbError,
    perturb,
    perturb_fields,
    perturbation_names,
)

LONG = (
    "I do not think it is a great idea, because you are really late tonight and people are waiting. "
    "Don't worry: it's fine, we'll see what they have to say about it before the meeting. "
    "Please come with your friend; I am sure that is okay, and they are probably happy to see you. "
    "She does not know why he cannot join us, but there is still time to ask him."
)
NO_LETTERS = "123 -- 456, 7.89! (0) #42 ... 3/4"
LETTER_BASED = ["typos", "char_swap", "char_delete", "casing", "contractions", "slang"]


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_same_seed_and_key_give_the_same_output(name):
    assert perturb(LONG, name, 0.5, seed=3, key="ex-1") == perturb(LONG, name, 0.5, seed=3, key="ex-1")


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_different_seeds_and_keys_give_different_outputs(name):
    base = perturb(LONG, name, 0.5, seed=0, key=0)
    assert perturb(LONG, name, 0.5, seed=1, key=0) != base
    assert perturb(LONG, name, 0.5, seed=0, key=1) != base


@pytest.mark.parametrize("name", list(PERTURBATIONS))
def test_severity_zero_is_identity_and_positive_severity_changes_text(name):
    assert perturb(LONG, name, 0.0, seed=5) == LONG
    assert perturb(LONG, name, 0.3, seed=5) != LONG


@pytest.mark.parametrize("name", LETTER_BASED)
def test_text_without_letters_is_untouched(name):
    assert perturb(NO_LETTERS, name, 1.0) == NO_LETTERS


@pytest.mark.parametrize("name", ["typos", "char_swap", "char_delete", "casing"])
def test_letter_perturbations_keep_everything_but_letters(name):
    out = perturb(LONG, name, 0.5, seed=2)
    assert re.sub("[A-Za-z]", "", out) == re.sub("[A-Za-z]", "", LONG)


def test_typos_only_produce_keyboard_neighbours_of_the_same_case():
    out = perturb(LONG, "typos", 0.5, seed=7)
    assert len(out) == len(LONG)
    changed = [(a, b) for a, b in zip(LONG, out) if a != b]
    assert changed
    for original, typo in changed:
        assert typo.lower() in KEYBOARD_NEIGHBOURS[original.lower()]
        assert typo.isupper() == original.isupper()


def test_keyboard_map_covers_the_alphabet_and_is_symmetric():
    assert sorted(KEYBOARD_NEIGHBOURS) == list("abcdefghijklmnopqrstuvwxyz")
    for key, neighbours in KEYBOARD_NEIGHBOURS.items():
        for neighbour in neighbours:
            assert key in KEYBOARD_NEIGHBOURS[neighbour], (key, neighbour)


def test_char_swap_keeps_each_words_letters():
    out = perturb(LONG, "char_swap", 1.0, seed=1)
    assert out != LONG
    assert [sorted(word) for word in out.split(" ")] == [sorted(word) for word in LONG.split(" ")]


def test_char_delete_never_empties_a_word():
    assert perturb("a I o u", "char_delete", 1.0) == "a I o u"
    out = perturb(LONG, "char_delete", 1.0)
    assert len(re.findall("[A-Za-z]+", out)) == len(re.findall("[A-Za-z]+", LONG))


def test_casing_changes_only_case():
    out = perturb(LONG, "casing", 0.5, seed=4)
    assert out != LONG
    assert out.lower() == LONG.lower()


def test_whitespace_changes_only_spaces():
    out = perturb(LONG, "whitespace", 0.5, seed=4)
    assert out != LONG
    assert out.replace(" ", "") == LONG.replace(" ", "")


def test_whitespace_leaves_newlines_alone():
    text = "first line\nsecond line\n"
    assert perturb(text, "whitespace", 1.0).count("\n") == 2


def test_contractions_go_both_ways_and_keep_first_letter_case():
    assert perturb("Do not go, it is late.", "contractions", 1.0) == "Don't go, it's late."
    assert perturb("Don't go, it's late.", "contractions", 1.0) == "Do not go, it is late."
    assert perturb("i am sure they won’t", "contractions", 1.0) == "I'm sure they will not"
    assert perturb("WE ARE here", "contractions", 1.0) == "WE'RE here"


def test_contractions_match_whole_words_only():
    assert perturb("ado nothing; visit is nothing", "contractions", 1.0) == "ado nothing; visit is nothing"


def test_slang_replaces_known_words_keeping_case():
    assert (
        perturb("You are great, please come tonight with people.", "slang", 1.0) == "U r gr8, pls come 2nite w/ ppl."
    )
    assert perturb("you're youth", "slang", 1.0) == "you're youth"


def test_unknown_name_is_reported_with_the_known_names_and_a_suggestion():
    with pytest.raises(PerturbError) as error:
        perturb(LONG, "typo")
    message = str(error.value)
    assert "'typo'" in message
    assert "did you mean 'typos'" in message
    assert all(name in message for name in PERTURBATIONS)


@pytest.mark.parametrize("severity", [-0.1, 1.5, float("nan")])
def test_severity_out_of_range_is_an_error(severity):
    with pytest.raises(PerturbError, match="severity"):
        perturb(LONG, "typos", severity)


def test_perturbation_names():
    assert perturbation_names("all") == list(PERTURBATIONS)
    assert len(PERTURBATIONS) == 7
    assert perturbation_names("typos, casing,typos") == ["typos", "casing"]
    assert perturbation_names(["slang"]) == ["slang"]
    with pytest.raises(PerturbError, match="char_swap"):
        perturbation_names("typos,char_swop")
    with pytest.raises(PerturbError):
        perturbation_names(" , ")


def test_perturb_fields_touches_only_the_named_fields():
    record = {"text": LONG, "label": "positive", "id": 7}
    out = perturb_fields(record, ["text"], "typos", 0.5, seed=1, key=record["id"])
    assert out["text"] != LONG
    assert out["label"] == "positive" and out["id"] == 7
    assert record["text"] == LONG  # the input record is not modified
    for field in ("missing", "id"):  # absent, and not text
        with pytest.raises(PerturbError, match=f"field '{field}'"):
            perturb_fields(record, [field], "typos")
