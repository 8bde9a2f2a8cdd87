"""Assembling train/validation/test records for a run: given splits, or deterministic ones from a seed."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunelab.config import RunConfig
from tunelab.data.readers import DataError, Record, read_source
from tunelab.data.validate import check_records, enforce


@dataclass
class TaskData:
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    labels: list[str] | None
    """Classification label set in id order; None for generation tasks."""
    notes: list[str]
    """What was done to the data (splits made, caps applied), for the log and the run card."""


def _only_split(source: dict[str, list[Record]], spec: str, wanted: str) -> list[Record]:
    if "data" in source:
        return source["data"]
    if wanted not in source:
        raise DataError(f"{spec} has no '{wanted}' split (it has: {', '.join(source)})")
    return source[wanted]


def _carve(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Deterministically move `fraction` of records out: (kept, carved)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(records) * fraction))
    carved_ids = set(order[:count])
    kept = [r for i, r in enumerate(records) if i not in carved_ids]
    carved = [r for i, r in enumerate(records) if i in carved_ids]
    return kept, carved


def infer_labels(records: list[Record], label_field: str) -> list[str]:
    return sorted({str(r.fields[label_field]) for r in records if r.problem is None and r.fields.get(label_field) not in (None, "")})


def load_task_data(config: RunConfig) -> TaskData:
    """Read, split and validate the run's data; raises DataError naming file, line and field."""
    data = config.data
    if not data.train:
        raise DataError("data.train is not set: give a file, a directory of split files, or hf:NAME")
    notes: list[str] = []
    train_source = read_source(data.train)
    train = _only_split(train_source, data.train, "train")
    given = {
        "validation": read_source(data.validation) if data.validation else None,
        "test": read_source(data.test) if data.test else None,
    }
    splits: dict[str, list[Record]] = {}
    for split, spec in (("validation", data.validation), ("test", data.test)):
        if given[split] is not None:
            splits[split] = _only_split(given[split], spec, split)
        elif split in train_source:
            splits[split] = train_source[split]
    for split, fraction, offset in (("test", data.test_fraction, 1), ("validation", data.validation_fraction, 0)):
        if split not in splits:
            train, splits[split] = _carve(train, fraction, data.split_seed + offset)
            notes.append(f"{split}: {len(splits[split])} records split from train (seed {data.split_seed + offset})")
    labels = None
    if config.task == "classification":
        labels = list(data.labels) if data.labels else infer_labels(train, data.label_field)
        if len(labels) < 2:
            raise DataError(f"{data.train}: field '{data.label_field}' has {len(labels)} distinct label(s); a classifier needs at least 2")
    checked = {
        name: enforce(check_records(records, config.task, data, labels), f"{name} data", data.skip_invalid)
        for name, records in (("train", train), ("validation", splits["validation"]), ("test", splits["test"]))
    }
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
    return TaskData(checked["train"], checked["validation"], checked["test"], labels, notes)
