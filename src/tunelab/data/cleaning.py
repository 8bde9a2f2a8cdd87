"""Cleaning that loses nothing silently: removing duplicates and overlapping records from training data.

Every record removed comes back with why (an exact duplicate, a near-duplicate, an overlap), what it duplicates or
overlaps (file:line, and which set) and how similar the two inputs are, so a run writes them to its
`data/removed.jsonl` and `tunelab data clean` beside its cleaned copy: what was dropped can always be read back.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data.quality import (
    Example,
    Fields,
    Sketched,
    exact_duplicates,
    examples_of,
    near_duplicates,
    overlap,
    run_fields,
    suite_examples,
)
from tunelab.records import DataError, Record


@dataclass
class Removed:
    record: Record
    reason: str
    """'duplicate' (same input and answer), 'near_duplicate' or 'overlap'."""
    of: str
    """Where the record it duplicates (the copy kept) or overlaps is: file:line."""
    similarity: float
    """Estimated Jaccard similarity of the two inputs; 1.0 for the same normalised input."""
    against: str | None = None
    """The set an overlapping record was found in ('test', 'retention: rte', a file)."""

    def as_dict(self) -> dict:
        return {
            "where": self.record.where,
            "reason": self.reason,
            "of": self.of,
            "against": self.against,
            "similarity": round(self.similarity, 4),
            "record": self.record.fields,
        }


@dataclass
class Cleaned:
    kept: list[Record]
    removed: list[Removed]
    """In file order."""
    notes: list[str]
    """One line per reason (and set), with its count."""


def _duplicate_groups(train: Sketched, dedup: str) -> list[list[int]]:
    if dedup == "exact":
        return exact_duplicates(train.examples)
    return near_duplicates(train) if dedup == "near" else []


def clean(
    records: list[Record], fields: Fields, dedup: str = "off", against: dict[str, list[Example]] | None = None
) -> Cleaned:
    """Remove the records whose input is in, or near one in, any set of `against`; then, as `dedup` says ('exact',
    'near' or 'off'), every record but the first left of each exact or near-duplicate group."""
    train = Sketched(examples_of(records, fields))
    gone: dict[int, Removed] = {}
    for name, others in (against or {}).items():
        for match in overlap(train, Sketched(others)):
            if match.index not in gone:
                where = others[match.other].where
                gone[match.index] = Removed(records[match.index], "overlap", where, match.similarity, name)
    for group in _duplicate_groups(train, dedup):
        survivors = [i for i in group if i not in gone]
        for i in survivors[1:]:
            kept = survivors[0]
            same = train.examples[i].text == train.examples[kept].text and (
                train.examples[i].answer == train.examples[kept].answer
            )
            reason = "duplicate" if same else "near_duplicate"
            gone[i] = Removed(records[i], reason, records[kept].where, train.similarity(i, kept))
    removed = [gone[i] for i in sorted(gone)]
    return Cleaned([record for i, record in enumerate(records) if i not in gone], removed, removal_notes(removed))


def removal_notes(removed: list[Removed]) -> list[str]:
    """One line per reason (and overlapped set) with its count, for the log, the notes and the card."""
    counts = Counter((item.reason, item.against) for item in removed)
    described = {"duplicate": "exact duplicate(s) removed", "near_duplicate": "near-duplicate(s) removed"}
    return [
        f"{count} {described[reason]}" if reason in described else f"{count} record(s) removed that overlap {against}"
        for (reason, against), count in counts.items()
    ]


def clean_training(config: RunConfig, train: list[Record], validation: list[Record], test: list[Record]) -> Cleaned:
    """A `data:` run's training records after `data.drop_overlap` (against its validation and test splits and its
    retention suite) and `data.dedup`; DataError when nothing would be left to train on."""
    data = config.data
    fields = run_fields(data)
    against: dict[str, list[Example]] = {}
    if data.drop_overlap:
        against = {"validation": examples_of(validation, fields), "test": examples_of(test, fields)}
        if config.eval.retention_suite:
            against.update(suite_examples(config.eval.retention_suite))
    cleaned = clean(train, fields, data.dedup, against)
    if not cleaned.kept:
        raise DataError(
            f"data.dedup={data.dedup} and data.drop_overlap={data.drop_overlap} removed all {len(train)} training "
            "records; check that data.train is not the test data, or turn them off"
        )
    return cleaned
