"""What training data holds as a whole: duplicates, near-duplicates, conflicting answers, and overlap with the
records a run or a suite is scored on.

Records are compared by their input, the text the model reads, after normalisation (Unicode NFKC, case folded,
whitespace collapsed), so "Great film!" and "great  film!" are one input; a conversation's input is its turns, as
its kind reads them (`Kind.compared_text`). Exact duplicates share the normalised
input and the answer; one input with different answers is a conflict. Near-duplicates come from MinHash
signatures of character shingles (datasketch): locality-sensitive hashing proposes candidate pairs, a pair counts
only when its estimated Jaccard similarity reaches the threshold, and pairs join into groups transitively
(connected components, what union-find computes). Identical inputs always join, so a near-duplicate group holds
the exact copies too, and `dedup: near` removes everything `dedup: exact` does and more.

This measures resemblance of whole inputs: a sentence quoted inside a long review, or a question asked about a
shared passage, is not found.
"""

from __future__ import annotations

import json
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property, partial

import numpy as np
from datasketch import MinHash, MinHashLSH
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from tunelab.config import DataConfig
from tunelab.data.task_records import load_records
from tunelab.kinds import kind_named
from tunelab.records import Record
from tunelab.render import template_fields
from tunelab.tasks import TaskSpec, load_task
from tunelab.tasks.suite import load_suite

NEAR_THRESHOLD = 0.8
"""Estimated Jaccard similarity of two inputs' shingle sets from which they are near-duplicates: a sentence of
twenty words with one word changed stays above it, unrelated sentences fall far below."""
SHINGLE_CHARS = 5
"""Characters per shingle: long enough that unrelated texts share few, short enough that a small edit changes few."""
PERMUTATIONS = 128
"""MinHash permutations: the similarity estimate's standard error is about sqrt(J (1 - J) / 128), 0.035 at 0.8."""
SEPARATOR = " \u241e "
"""Between the input fields of one record (text and text pair), so ('a b', 'c') and ('a', 'b c') stay different;
the record-separator symbol survives normalisation."""


@dataclass(frozen=True)
class Fields:
    """Which record fields hold what the model reads (its input) and what it is taught to answer."""

    inputs: tuple[str, ...]
    answer: str | None
    """None when nothing is answered (language modelling, a conversation): duplicates are then decided by the
    input alone."""
    compared: Callable[[Record], str | None] | None = field(default=None, compare=False)
    """The kind's own reading of a record's compared input (`Kind.compared_text`: a conversation's turns), used
    where it gives one instead of the input fields; two Fields are equal when their fields are."""


def run_fields(data: DataConfig) -> Fields:
    """The input and answer fields of a `data:` section's records: a classifier reads its text (and text pair) and
    answers a label; a generator reads its prompt template's fields (or its prompt field) and answers the response;
    a language model reads raw text and answers nothing."""
    kind = kind_named(data.kind)
    return Fields(
        tuple(kind.run_fields(data, with_target=False)),
        kind.answer_field(data),
        partial(kind.compared_text, source=data),
    )


def task_fields(spec: TaskSpec) -> Fields:
    """A task's input fields (what robustness perturbs and bias swaps, so what contamination compares) and the
    field of the answer it trains on."""
    inputs = spec.input_fields or (template_fields(spec.templates[0]) if spec.templates else [spec.text_field])
    return Fields(
        tuple(inputs), spec.handler.task_answer_field(spec), partial(spec.handler.compared_text, source=spec)
    )


def normalise(text: str) -> str:
    """The form inputs are compared in: NFKC (full-width and compatibility characters folded), case folded,
    whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def _text(value) -> str:
    """A field value as text: a token list as its words, a mapping as sorted JSON, anything else through str()."""
    if isinstance(value, (list, tuple)):
        return " ".join(_text(item) for item in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, ensure_ascii=False)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Example:
    """A record as the checks see it: normalised input and answer, and where it came from."""

    text: str
    answer: str | None
    where: str


def _input(record: Record, fields: Fields) -> str:
    """What a record is compared by: the kind's reading where it gives one, else its input fields joined."""
    compared = fields.compared(record) if fields.compared else None
    if compared is not None:
        return compared
    return SEPARATOR.join(_text(record.fields.get(name)) for name in fields.inputs)


def examples_of(records: list[Record], fields: Fields) -> list[Example]:
    return [
        Example(
            normalise(_input(record, fields)),
            normalise(_text(record.fields.get(fields.answer))) if fields.answer else None,
            record.where,
        )
        for record in records
    ]


def task_examples(spec: TaskSpec, records: list[Record]) -> list[Example]:
    return examples_of(records, task_fields(spec))


def _shingles(text: str) -> list[bytes]:
    """The text's distinct character shingles; a text shorter than one shingle is its own."""
    return list({text[i : i + SHINGLE_CHARS].encode("utf-8") for i in range(max(1, len(text) - SHINGLE_CHARS + 1))})


class Sketched:
    """A set of examples with one MinHash signature per distinct input, computed on first use and shared by every
    comparison the set takes part in (a training set is compared with several splits and suites)."""

    def __init__(self, examples: list[Example], threshold: float = NEAR_THRESHOLD):
        self.examples = examples
        self.threshold = threshold
        self.texts = list(dict.fromkeys(example.text for example in examples))
        self.position = {text: i for i, text in enumerate(self.texts)}

    @cached_property
    def sketches(self) -> list[MinHash]:
        return MinHash.bulk((_shingles(text) for text in self.texts), num_perm=PERMUTATIONS)

    @cached_property
    def lsh(self) -> MinHashLSH:
        """Candidate pairs at about the threshold; a candidate is a guess until its similarity is checked."""
        index = MinHashLSH(threshold=self.threshold, num_perm=PERMUTATIONS)
        with index.insertion_session() as session:
            for key, sketch in enumerate(self.sketches):
                session.insert(key, sketch, check_duplication=False)
        return index

    def similarity(self, i: int, j: int) -> float:
        """Estimated Jaccard similarity of examples i and j's inputs; exactly 1.0 for the same input."""
        a, b = self.examples[i].text, self.examples[j].text
        return 1.0 if a == b else self.sketches[self.position[a]].jaccard(self.sketches[self.position[b]])


def exact_duplicates(examples: list[Example]) -> list[list[int]]:
    """Groups of records with the same normalised input and answer, in file order (cleaning keeps the first)."""
    groups: dict[tuple[str, str | None], list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        groups[example.text, example.answer].append(i)
    return [group for group in groups.values() if len(group) > 1]


def conflicts(examples: list[Example]) -> list[list[int]]:
    """Groups of records that share one input but not one answer: the model is taught both."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, example in enumerate(examples):
        if example.answer is not None:
            groups[example.text].append(i)
    return [group for group in groups.values() if len({examples[i].answer for i in group}) > 1]


def near_duplicates(data: Sketched) -> list[list[int]]:
    """Groups of records whose inputs are the same or near (estimated Jaccard >= the threshold, transitively), in
    file order; each group holds at least two records."""
    if not data.examples:
        return []
    rows, columns = [], []
    for i, sketch in enumerate(data.sketches):
        for j in data.lsh.query(sketch):
            if j > i and sketch.jaccard(data.sketches[j]) >= data.threshold:
                rows.append(i)
                columns.append(j)
    size = len(data.texts)
    graph = coo_matrix((np.ones(len(rows)), (rows, columns)), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[int]] = defaultdict(list)
    for i, example in enumerate(data.examples):
        groups[component[data.position[example.text]]].append(i)
    return sorted((group for group in groups.values() if len(group) > 1), key=lambda group: group[0])


@dataclass(frozen=True)
class Match:
    """A record of one set whose input is in, or near one in, another set."""

    index: int
    other: int
    """The other set's record it matches (the first with the same input, else the most similar)."""
    similarity: float


def overlap(data: Sketched, other: Sketched) -> list[Match]:
    """Each record of `data` whose input is also in `other` (similarity 1.0) or near one of its inputs."""
    first = {}
    for j, example in enumerate(other.examples):
        first.setdefault(example.text, j)
    nearest: dict[str, tuple[int, float]] = {}
    for text in data.texts:
        if text in first:
            nearest[text] = (first[text], 1.0)
            continue
        sketch = data.sketches[data.position[text]]
        scored = [(sketch.jaccard(other.sketches[k]), k) for k in other.lsh.query(sketch)]
        best = max(scored, default=(0.0, -1))
        if best[0] >= data.threshold:
            nearest[text] = (first[other.texts[best[1]]], best[0])
    return [Match(i, *nearest[example.text]) for i, example in enumerate(data.examples) if example.text in nearest]


RARE_LABEL = 5
"""A training label given to fewer records than this, and to at most a quarter as many as the most frequent label,
is reported as rare: usually a typo or a class too small to learn. In a small, even file no label is rare."""


def label_counts(records: list[Record], label_field: str) -> dict[str, int]:
    """Records per label, most frequent first."""
    return dict(Counter(str(record.fields[label_field]) for record in records).most_common())


def label_findings(counts: dict[str, int], elsewhere: dict[str, set[str]], pinned: list[str] | None) -> dict:
    """What in a classifier's training labels is likely a mistake, since every distinct label becomes a class:
    labels that differ only in case or spacing ('Positive' beside 'positive'), rare labels, labels that a set the
    model is validated or scored on (`elsewhere`, normalised answers by set name) never has, and labels of the
    pinned set (`data.labels`) that no training record has."""
    variants: dict[str, list[str]] = defaultdict(list)
    for label in counts:
        variants[normalise(label)].append(label)
    most = max(counts.values(), default=0)
    return {
        "variants": [group for group in variants.values() if len(group) > 1],
        "rare": [label for label, count in counts.items() if count < RARE_LABEL and 4 * count <= most],
        "absent": {
            name: absent
            for name, seen in elsewhere.items()
            if (absent := [label for label in counts if normalise(label) not in seen])
        },
        "unused": [label for label in pinned or [] if label not in counts],
    }


def suite_examples(reference: str) -> dict[str, list[Example]]:
    """Every record each task of a suite can score, keyed 'SUITE: TASK': the task's whole evaluated split, not
    only the draw its limit takes, so a check holds for any limit and seed."""
    suite = load_suite(reference)
    found = {}
    for entry in suite.tasks:
        spec = load_task(entry.task)
        found[f"{suite.name}: {spec.name}"] = task_examples(spec, load_records(spec))
    return found
