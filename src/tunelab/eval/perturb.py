"""Seeded input perturbations for robustness tests (HELM-style noise injection).

A robustness evaluation runs the same examples twice, once clean and once with
noise, and reports the drop. For the drop to mean anything the noise must be
reproducible, so every perturbation takes its randomness from
`random.Random(f"{seed}:{name}:{key}")`: string seeds hash the same way in
every process (unlike `hash()`), the same text, seed and key always give the
same output, and passing the example's id or index as `key` gives each example
its own noise rather than the same pattern everywhere.

Each perturbation rewrites only the spans it targets, found by a regular
expression and replaced through `re.sub`, so everything it does not touch
(punctuation, digits, the original spacing, non-ASCII text) comes back byte for
byte. `severity` is the probability that any one unit (a word, a letter, a gap
between words, a contractable phrase) is changed; 0 returns the text as it is.

Perturbations rewrite the text they are given and nothing else: callers perturb
input fields only, never labels (`perturb_fields` does that for a record).
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from tunelab.eval import EvaluationError

LETTER = re.compile(r"[A-Za-z]")
WORD = re.compile(r"[A-Za-z]+")
WORD_WITH_APOSTROPHE = re.compile(r"(?<![\w'’])[A-Za-z]+(?:['’][A-Za-z]+)?(?![\w'’])")
GAP = re.compile(r" +|(?<=\w)(?=[^\w\s])|(?<=[^\w\s])(?=\w)")
"""A run of spaces, or the empty boundary between a word and punctuation."""

# Neighbours on a QWERTY keyboard, diagonals included; the relation is symmetric.
KEYBOARD_NEIGHBOURS = {
    "q": "wa", "w": "qeas", "e": "wrsd", "r": "etdf", "t": "ryfg",
    "y": "tugh", "u": "yihj", "i": "uojk", "o": "ipkl", "p": "ol",
    "a": "qwsz", "s": "weadzx", "d": "ersfxc", "f": "rtdgcv", "g": "tyfhvb",
    "h": "yugjbn", "j": "uihknm", "k": "iojlm", "l": "opk",
    "z": "asx", "x": "sdzc", "c": "dfxv", "v": "fgcb", "b": "ghvn",
    "n": "hjbm", "m": "jkn",
}  # fmt: skip

# (expanded, contracted); each side appears once, so both directions are functions.
CONTRACTIONS = (
    ("do not", "don't"), ("does not", "doesn't"), ("did not", "didn't"),
    ("is not", "isn't"), ("are not", "aren't"), ("was not", "wasn't"),
    ("were not", "weren't"), ("have not", "haven't"), ("has not", "hasn't"),
    ("had not", "hadn't"), ("will not", "won't"), ("would not", "wouldn't"),
    ("should not", "shouldn't"), ("could not", "couldn't"), ("cannot", "can't"),
    ("must not", "mustn't"), ("I am", "I'm"), ("you are", "you're"),
    ("we are", "we're"), ("they are", "they're"), ("it is", "it's"),
    ("he is", "he's"), ("she is", "she's"), ("that is", "that's"),
    ("there is", "there's"), ("what is", "what's"), ("who is", "who's"),
    ("I have", "I've"), ("you have", "you've"), ("we have", "we've"),
    ("they have", "they've"), ("I will", "I'll"), ("you will", "you'll"),
    ("I would", "I'd"), ("let us", "let's"),
)  # fmt: skip

SLANG = {
    "you": "u", "your": "ur", "are": "r", "because": "bc", "people": "ppl",
    "tonight": "2nite", "today": "2day", "tomorrow": "tmrw", "great": "gr8",
    "later": "l8r", "before": "b4", "please": "pls", "really": "rly",
    "with": "w/", "without": "w/o", "for": "4", "to": "2", "be": "b",
    "see": "c", "why": "y", "okay": "k", "thanks": "thx", "love": "luv",
    "what": "wut", "about": "abt", "something": "smth", "someone": "sum1",
    "everyone": "every1", "anyone": "any1", "though": "tho", "through": "thru",
    "know": "kno", "message": "msg", "probably": "prob", "between": "btwn",
    "definitely": "def", "seriously": "srsly", "favorite": "fave",
    "favourite": "fave", "friend": "frnd", "night": "nite", "information": "info",
}  # fmt: skip


class PerturbError(EvaluationError):
    """A perturbation request that cannot be honoured (unknown name, severity out of range, missing field)."""


@dataclass(frozen=True)
class Perturbation:
    name: str
    apply: Callable[[str, random.Random, float], str]
    description: str


def match_case(source: str, target: str) -> str:
    """Give `target` the casing of `source` (ALL CAPS, Capitalised, or as stored), so rewrites do not stand out by case."""
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def typos(text: str, rng: random.Random, severity: float) -> str:
    """Replace letters by a QWERTY neighbour: the mistakes a hurried typist actually makes, not random characters."""

    def replace(match: re.Match[str]) -> str:
        letter = match.group()
        if rng.random() >= severity:
            return letter
        neighbour = rng.choice(KEYBOARD_NEIGHBOURS[letter.lower()])
        return neighbour.upper() if letter.isupper() else neighbour

    return LETTER.sub(replace, text)


def char_swap(text: str, rng: random.Random, severity: float) -> str:
    """Swap two adjacent, different letters inside a word, so a chosen word really changes."""

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        positions = [i for i in range(len(word) - 1) if word[i] != word[i + 1]]
        if not positions or rng.random() >= severity:
            return word
        i = rng.choice(positions)
        return word[:i] + word[i + 1] + word[i] + word[i + 2 :]

    return WORD.sub(replace, text)


def char_delete(text: str, rng: random.Random, severity: float) -> str:
    """Delete one letter from a word; one-letter words are left alone so no word disappears."""

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        if len(word) < 2 or rng.random() >= severity:
            return word
        i = rng.randrange(len(word))
        return word[:i] + word[i + 1 :]

    return WORD.sub(replace, text)


def casing(text: str, rng: random.Random, severity: float) -> str:
    """Recase a word as lower, UPPER or Title, choosing only among forms that differ from the word as written."""

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        title = word[:1].upper() + word[1:].lower()  # not str.title(), which gives "Don'T"
        choices = sorted({word.lower(), word.upper(), title} - {word})
        if not choices or rng.random() >= severity:
            return word
        return rng.choice(choices)

    return WORD_WITH_APOSTROPHE.sub(replace, text)


def whitespace(text: str, rng: random.Random, severity: float) -> str:
    """Remove or widen a run of spaces, or put a space between a word and punctuation.

    Newlines and tabs are left alone: they often carry structure (lists, code)
    that a robustness test of sloppy spacing should not destroy.
    """

    def replace(match: re.Match[str]) -> str:
        gap = match.group()
        if rng.random() >= severity:
            return gap
        if not gap:
            return " "
        return "" if rng.random() < 0.5 else gap + " " * rng.randint(1, 2)

    return GAP.sub(replace, text)


def _contraction_table() -> tuple[re.Pattern[str], dict[str, str]]:
    """One pattern for both directions, longest alternatives first, and lower-case form -> other form.

    Either apostrophe (' or ’) is accepted in the text; rewrites use the straight one.
    """
    table: dict[str, str] = {}
    for expanded, contracted in CONTRACTIONS:
        table[expanded.lower()] = contracted
        table[contracted.lower()] = expanded
    alternatives = sorted(table, key=len, reverse=True)
    body = "|".join(re.escape(form).replace("'", "['’]").replace(r"\ ", " ") for form in alternatives)
    return re.compile(rf"(?<![\w'’])(?:{body})(?![\w'’])", re.IGNORECASE), table


CONTRACTION_PATTERN, CONTRACTION_TABLE = _contraction_table()


def contractions(text: str, rng: random.Random, severity: float) -> str:
    """Contract expansions ("do not" -> "don't") and expand contractions ("it's" -> "it is").

    Both directions happen in one pass, so a formal text gets informal and an
    informal one formal; "it's" and the like always expand to the "is" reading.
    """

    def replace(match: re.Match[str]) -> str:
        form = match.group()
        if rng.random() >= severity:
            return form
        return match_case(form, CONTRACTION_TABLE[form.lower().replace("’", "'")])

    return CONTRACTION_PATTERN.sub(replace, text)


def slang(text: str, rng: random.Random, severity: float) -> str:
    """Replace words by internet abbreviations ("you" -> "u", "great" -> "gr8"), keeping the first letter's case."""

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        short = SLANG.get(word.lower())
        if short is None or rng.random() >= severity:
            return word
        return match_case(word, short)

    return WORD_WITH_APOSTROPHE.sub(replace, text)


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("typos", typos, "replace letters by a QWERTY keyboard neighbour"),
        Perturbation("char_swap", char_swap, "swap two adjacent letters inside a word"),
        Perturbation("char_delete", char_delete, "delete a letter inside a word"),
        Perturbation("casing", casing, "recase words as lower, UPPER or Title"),
        Perturbation("whitespace", whitespace, "remove or add spaces between words and around punctuation"),
        Perturbation("contractions", contractions, "contract expansions and expand contractions"),
        Perturbation("slang", slang, "replace words by internet abbreviations"),
    )
}


def _unknown(name: str) -> PerturbError:
    """The error for an unknown name: what was asked, what exists, and the nearest match when there is one."""
    message = f"unknown perturbation {name!r}; known: {', '.join(PERTURBATIONS)}"
    close = difflib.get_close_matches(name, PERTURBATIONS, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    return PerturbError(message)


def perturbation_names(spec: str | list[str]) -> list[str]:
    """Resolve "all", a comma-separated string or a list into validated names, in the order given, without repeats."""
    if spec == "all":
        return list(PERTURBATIONS)
    raw = spec.split(",") if isinstance(spec, str) else spec
    names = list(dict.fromkeys(name.strip() for name in raw if name.strip()))
    if not names:
        raise PerturbError(f"no perturbation named; known: {', '.join(PERTURBATIONS)} (or 'all')")
    for name in names:
        if name not in PERTURBATIONS:
            raise _unknown(name)
    return names


def perturb(text: str, name: str, severity: float = 0.1, seed: int = 0, key: str | int = 0) -> str:
    """Apply one perturbation with its own seeded rng; the same arguments always give the same text."""
    if name not in PERTURBATIONS:
        raise _unknown(name)
    if not 0.0 <= severity <= 1.0:
        raise PerturbError(f"severity must be between 0 and 1, got {severity!r}")
    if severity == 0:
        return text
    rng = random.Random(f"{seed}:{name}:{key}")
    return PERTURBATIONS[name].apply(text, rng, severity)


def perturb_fields(
    record: Mapping[str, Any],
    fields: Iterable[str],
    name: str,
    severity: float = 0.1,
    seed: int = 0,
    key: str | int = 0,
) -> dict[str, Any]:
    """A copy of `record` with only the named input fields perturbed, so labels can never be touched by accident.

    Each field gets its own noise (key `"{key}:{field}"`), so a question and its
    context are not perturbed in lock-step.
    """
    perturbed = dict(record)
    for field in fields:
        value = record.get(field)
        if not isinstance(value, str):
            raise PerturbError(f"field {field!r} is not a text field of this record (fields: {', '.join(record)})")
        perturbed[field] = perturb(value, name, severity, seed, f"{key}:{field}")
    return perturbed
