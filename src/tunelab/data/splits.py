"""Assembling train/validation/test records for a run: given splits, or deterministic ones from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.config import DataConfig, RunConfig
from tunelab.data.cleaning import Removed, clean_training
from tunelab.data.readers import read_source
from tunelab.data.validate import check_records, enforce
from tunelab.kinds import kind_of_run
from tunelab.records import DataError, Record


@dataclass
class TaskData:
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    labels: list[str] | None
    """Classification label set in id order; None for generation tasks."""
    notes: list[str]
    """What was done to the data (splits made, records removed, caps applied), for the log and the run card."""
    removed: list[Removed] = field(default_factory=list)
    """Training records `data.dedup` and `data.drop_overlap` removed, each with why, for the run directory."""


def _only_split(source: dict[str, list[Record]], spec: str, wanted: str) -> list[Record]:
    if "data" in source:
        return source["data"]
    if wanted not in source:
        raise DataError(f"{spec} has no '{wanted}' split (it has: {', '.join(source)})")
    return source[wanted]


def _carve(records: list[Record], count: int, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministically move `count` records out: (kept, carved)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    carved_ids = set(order[:count])
    kept = [r for i, r in enumerate(records) if i not in carved_ids]
    carved = [r for i, r in enumerate(records) if i in carved_ids]
    return kept, carved


def label_set(records: list[Record], config: RunConfig, source: str) -> list[str]:
    """The configured labels, or the sorted labels of the records that pass the field checks (so a record
    that will be rejected or skipped cannot add a class)."""
    data = config.data
    if data.labels:
        return list(data.labels)
    checked = check_records(records, kind_of_run(config), data, None)
    labels = sorted({str(r.fields[data.label_field]) for r in checked.valid})
    if len(labels) < 2:
        enforce(checked, source, skip_invalid=False)  # invalid records, if any, explain the missing labels best
        raise DataError(
            f"{source}: field '{data.label_field}' has {len(labels)} distinct label(s); a classifier needs at least 2"
        )
    return labels


def _read_configured(data: DataConfig, key: str) -> dict[str, list[Record]]:
    """`data.<key>` read into splits; a config file's relative path that exists nowhere is named with every
    absolute path tried (beside the config file, then under the working directory)."""
    tried = data.tried(key)
    if tried and not Path(getattr(data, key)).exists():
        raise DataError(f"data.{key}: no such file or folder; tried {' and '.join(tried)}")
    return read_source(getattr(data, key))


def load_task_data(config: RunConfig) -> TaskData:
    """Read, split and validate the run's data; raises DataError naming file, line and field."""
    data = config.data
    if not data.train:
        raise DataError("data.train is not set: give a file, a directory of split files, or hf:NAME")
    notes: list[str] = []
    train_source = _read_configured(data, "train")
    train = _only_split(train_source, data.train, "train")
    given = {
        "validation": _read_configured(data, "validation") if data.validation else None,
        "test": _read_configured(data, "test") if data.test else None,
    }
    splits: dict[str, list[Record]] = {}
    for split, spec in (("validation", data.validation), ("test", data.test)):
        if given[split] is not None:
            splits[split] = _only_split(given[split], spec, split)
        elif split in train_source:
            splits[split] = train_source[split]
    total = len(train)  # fractions are shares of all of train, not of what is left after the other split
    for split, fraction, offset in (("test", data.test_fraction, 1), ("validation", data.validation_fraction, 0)):
        if split not in splits:
            train, splits[split] = _carve(train, max(1, round(total * fraction)), data.split_seed + offset)
            notes.append(f"{split}: {len(splits[split])} records split from train (seed {data.split_seed + offset})")
    kind = kind_of_run(config)
    labels = label_set(train, config, data.train) if kind.head_answers else list(kind.head_labels) or None
    checked = {
        name: enforce(check_records(records, kind, data, labels), f"{name} data", data.skip_invalid)
        for name, records in (("train", train), ("validation", splits["validation"]), ("test", splits["test"]))
    }
    removed: list[Removed] = []
    if data.dedup != "off" or data.drop_overlap:
        cleaned = clean_training(config, checked["train"], checked["validation"], checked["test"])
        checked["train"], removed = cleaned.kept, cleaned.removed
        notes += [f"train: {note} (see data/removed.jsonl)" for note in cleaned.notes]
    if data.max_train_examples and len(checked["train"]) > data.max_train_examples:
        notes.append(f"train: first {data.max_train_examples} of {len(checked['train'])} records used")
        checked["train"] = checked["train"][: data.max_train_examples]
    for split in ("validation", "test"):
        if data.max_eval_examples and len(checked[split]) > data.max_eval_examples:
            notes.append(f"{split}: first {data.max_eval_examples} of {len(checked[split])} records used")
            checked[split] = checked[split][: data.max_eval_examples]
    for split, records in checked.items():
        if not records:
            raise DataError(f"{split} data is empty after validation; check data.{split} and the field mapping")
    return TaskData(checked["train"], checked["validation"], checked["test"], labels, notes, removed)
