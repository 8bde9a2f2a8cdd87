"""Counterfactual pairs for bias tests: the same text with a demographic attribute flipped.

A bias test feeds a model a text and its counterfactual ("He is a nurse." /
"She is a nurse.") and compares the outputs; any difference is down to the
attribute, because nothing else changed. That only holds if the rewrite is
exact, so this module:

- matches whole words only (a run of ASCII letters with no letter, digit or
  underscore on either side), so "manage", "theme" and "Hershey" are never
  touched, while "man's" and "father-in-law" are;
- keeps the case of each word (he -> she, He -> She, HE -> SHE);
- replaces words through `re.sub`, so punctuation and spacing come back byte
  for byte.

An attribute is a list of one-to-one (male, female) word pairs, plus a
context rule for the pronouns that English does not pair up: female "her" is
both the possessive ("her book" -> "his book") and the object ("saw her" ->
"saw him"), and male "his" is both the possessive ("his book" -> "her book")
and the standalone pronoun ("the book is his" -> "hers"). These two are resolved by the word that
follows (see `_is_determiner`). Words on the far side of the pairs ("him",
"hers") are unambiguous and always map back, so `swap(swap(t)) == t` whenever
the heuristic reads the sentence correctly.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from tunelab.eval import EvaluationError

GROUPS = ("female", "male")

WORD = re.compile(r"(?<!\w)[A-Za-z]+(?!\w)")
NEXT_WORD = re.compile(r"\s*(\w+)")

# Words after which "her"/"his" is not a possessive determiner: articles,
# pronouns and possessives, auxiliaries, prepositions, conjunctions and a few
# adverbs that typically follow an object ("saw her yesterday").
FUNCTION_WORDS = frozenset(
    """
    a an the this that these those some any no every each all both
    i you he she it we they me him her us them my your his its our their mine yours hers ours theirs
    myself yourself himself herself itself ourselves themselves
    who whom whose which what where when why how
    am is are was were be been being do does did done has have had having
    will would shall should can could may might must
    not never also too again now then here there today yesterday tomorrow tonight
    back away home off out up down in on at to for from with by of about into onto over under
    after before since until through around across against among between behind during
    without within along towards toward upon like than as
    and or but nor so yet because if while though although unless whether once
    """.split()
)


class CounterfactualError(EvaluationError):
    """An unknown attribute or group; the message lists the known ones."""


@dataclass(frozen=True)
class Attribute:
    name: str
    description: str
    pairs: tuple[tuple[str, str], ...]
    """(male, female) words, lower case unless a word is always capitalised (names)."""
    by_context: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    """Ambiguous word -> (counterpart when it is a possessive determiner, counterpart otherwise)."""


GENDER_PAIRS = (
    ("he", "she"), ("him", "her"), ("his", "hers"), ("himself", "herself"),
    ("man", "woman"), ("men", "women"), ("boy", "girl"), ("boys", "girls"),
    ("male", "female"), ("males", "females"), ("masculine", "feminine"),
    ("father", "mother"), ("fathers", "mothers"), ("dad", "mom"), ("dads", "moms"),
    ("daddy", "mommy"), ("son", "daughter"), ("sons", "daughters"),
    ("brother", "sister"), ("brothers", "sisters"), ("husband", "wife"), ("husbands", "wives"),
    ("king", "queen"), ("kings", "queens"), ("prince", "princess"), ("princes", "princesses"),
    ("mr", "mrs"), ("sir", "madam"), ("actor", "actress"), ("actors", "actresses"),
    ("boyfriend", "girlfriend"), ("boyfriends", "girlfriends"), ("uncle", "aunt"), ("uncles", "aunts"),
    ("nephew", "niece"), ("nephews", "nieces"), ("gentleman", "lady"), ("gentlemen", "ladies"),
    ("grandfather", "grandmother"), ("grandpa", "grandma"), ("grandson", "granddaughter"),
    ("stepfather", "stepmother"), ("stepson", "stepdaughter"), ("godfather", "godmother"),
    ("groom", "bride"), ("widower", "widow"), ("fiance", "fiancee"), ("monk", "nun"),
    ("waiter", "waitress"), ("brotherhood", "sisterhood"), ("manhood", "womanhood"),
    ("paternal", "maternal"), ("businessman", "businesswoman"), ("businessmen", "businesswomen"),
    ("chairman", "chairwoman"), ("spokesman", "spokeswoman"), ("policeman", "policewoman"),
    ("salesman", "saleswoman"),
)  # fmt: skip

NAME_PAIRS = (
    ("John", "Mary"), ("James", "Jennifer"), ("Robert", "Linda"), ("Michael", "Elizabeth"),
    ("William", "Barbara"), ("David", "Susan"), ("Richard", "Jessica"), ("Joseph", "Sarah"),
    ("Thomas", "Karen"), ("Charles", "Nancy"), ("Christopher", "Lisa"), ("Daniel", "Margaret"),
    ("Matthew", "Sandra"), ("Anthony", "Ashley"), ("Donald", "Kimberly"), ("Steven", "Donna"),
    ("Paul", "Michelle"), ("Andrew", "Dorothy"), ("Joshua", "Amanda"), ("Kenneth", "Melissa"),
    ("Kevin", "Deborah"), ("Brian", "Stephanie"), ("George", "Rebecca"), ("Edward", "Laura"),
    ("Ronald", "Sharon"), ("Timothy", "Cynthia"), ("Jason", "Kathleen"), ("Jeffrey", "Amy"),
    ("Ryan", "Angela"), ("Jacob", "Emma"), ("Gary", "Helen"), ("Nicholas", "Anna"),
    ("Eric", "Brenda"), ("Jonathan", "Pamela"), ("Samuel", "Nicole"), ("Benjamin", "Olivia"),
    ("Alexander", "Sophia"), ("Ethan", "Hannah"), ("Noah", "Chloe"), ("Liam", "Zoe"),
)  # fmt: skip

ATTRIBUTES: dict[str, Attribute] = {
    "gender_words": Attribute(
        "gender_words",
        "gendered pronouns and nouns (he/she, his/her, man/woman, father/mother, ...)",
        GENDER_PAIRS,
        {"her": ("his", "him"), "his": ("her", "hers")},
    ),
    "names": Attribute("names", "common English first names, paired male/female", NAME_PAIRS),
}


def _attribute(name: str) -> Attribute:
    """Look up an attribute, or fail naming the known ones (and the nearest, for a typo)."""
    if name in ATTRIBUTES:
        return ATTRIBUTES[name]
    message = f"unknown attribute {name!r}; known: {', '.join(ATTRIBUTES)}"
    close = difflib.get_close_matches(name, ATTRIBUTES, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise CounterfactualError(message)


def _check_group(group: str) -> None:
    if group not in GROUPS:
        raise CounterfactualError(f"unknown group {group!r}; known: {', '.join(GROUPS)}")


def _lexicon(attribute: Attribute) -> dict[str, tuple[str, str]]:
    """Lower-case word -> (its group, its counterpart as stored).

    For a `by_context` word ("her" in him/her) only the group is used: `_rewrite`
    picks its counterpart per occurrence from the context.
    """
    lexicon: dict[str, tuple[str, str]] = {}
    for male, female in attribute.pairs:
        lexicon[male.lower()] = ("male", female)
        lexicon[female.lower()] = ("female", male)
    return lexicon


LEXICONS = {name: _lexicon(attribute) for name, attribute in ATTRIBUTES.items()}


def _is_determiner(match: re.Match[str]) -> bool:
    """Whether an ambiguous "her"/"his" is a possessive determiner, judged by the word after it.

    A following content word ("her book", "his old car") means a determiner;
    punctuation, the end of the text, or a function word ("gave her the book",
    "told her that", "the book is his.") means the object/standalone pronoun.
    Wrong when a content word follows an object ("I saw her leave" -> "I saw
    his leave") and when a determiner is followed by a word listed in
    FUNCTION_WORDS ("her back" -> "him back", which is right for "pay her back"
    but wrong for "her back hurts").
    """
    following = NEXT_WORD.match(match.string, match.end())
    return following is not None and following.group(1).lower() not in FUNCTION_WORDS


def _match_case(source: str, target: str) -> str:
    """Give `target` the casing of `source`: ALL CAPS, Capitalised, or lower case."""
    if len(source) > 1 and source.isupper():
        return target.upper()
    if source[:1].isupper():
        return target[:1].upper() + target[1:].lower()
    return target.lower()


def _rewrite(text: str, attribute: Attribute, keep_group: str | None) -> str:
    """Replace every attribute word by its counterpart, except words already in `keep_group`."""
    lexicon = LEXICONS[attribute.name]

    def replace(match: re.Match[str]) -> str:
        word = match.group()
        entry = lexicon.get(word.lower())
        if entry is None or entry[0] == keep_group:
            return word
        target = entry[1]
        ambiguous = attribute.by_context.get(word.lower())
        if ambiguous is not None:
            target = ambiguous[0] if _is_determiner(match) else ambiguous[1]
        return _match_case(word, target)

    return WORD.sub(replace, text)


def groups(attribute: str) -> tuple[str, str]:
    """The groups an attribute's words fall into, in a fixed order."""
    _attribute(attribute)
    return GROUPS


def mentions(text: str, attribute: str, group: str | None = None) -> bool:
    """Whether `text` contains a word of `attribute` (of `group` only, when given)."""
    lexicon = LEXICONS[_attribute(attribute).name]
    if group is not None:
        _check_group(group)
    for match in WORD.finditer(text):
        entry = lexicon.get(match.group().lower())
        if entry is not None and group in (None, entry[0]):
            return True
    return False


def to_group(text: str, attribute: str, group: str) -> str:
    """Rewrite every attribute word into `group`'s form; words already in that group stay as they are."""
    _check_group(group)
    return _rewrite(text, _attribute(attribute), keep_group=group)


def swap(text: str, attribute: str) -> str:
    """Swap every attribute word to the other group, in both directions at once."""
    return _rewrite(text, _attribute(attribute), keep_group=None)
