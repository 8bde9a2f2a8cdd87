"""A task's records: read from its source (the split it evaluates, trains on or validates with), drawn, and
checked for the fields its kind reads, with file:line errors."""

from __future__ import annotations

import random
from pathlib import Path

from tunelab.data.readers import read_file, read_source
from tunelab.data.validate import check_records, enforce
from tunelab.records import DataError, Record
from tunelab.render import template_fields
from tunelab.tasks import Suite, TaskError, TaskSpec, data_root, load_task, split_slice


def _source_path(spec: TaskSpec) -> str:
    if spec.source.startswith("hf:") or Path(spec.source).expanduser().exists():
        return spec.source
    folder = data_root() / spec.source
    if not folder.exists():
        raise TaskError(
            f"task {spec.name}: data source '{spec.source}' is not a path and not a folder under the data "
            f"root {data_root()}; set TUNELAB_DATA to the folder holding it"
        )
    return str(folder)


def load_records(spec: TaskSpec, limit: int | None = None, seed: int = 0, split: str | None = None) -> list[Record]:
    """The task's evaluation records: all of the split, or `limit` of them drawn with `seed` (in file order),
    so two models evaluated with the same limit and seed see the same examples."""
    split = split or spec.split
    source = _source_path(spec)
    splits = read_source(source)
    name, rows = split_slice(split)
    records = splits.get(name) or splits.get("data")
    if records is None:
        raise TaskError(f"task {spec.name}: {source} has no '{name}' split (it has: {', '.join(splits)})")
    records = records[rows]
    bad = next((r for r in records if r.problem), None)
    if bad:
        raise DataError(f"{bad.where}: {bad.problem}")
    if spec.unique and spec.text_field:
        seen: set[str] = set()
        records = [
            r
            for r in records
            if not (r.fields.get(spec.text_field) in seen or seen.add(r.fields.get(spec.text_field)))
        ]
    _check_fields(spec, records)
    return draw_records(records, limit, seed)


def draw_records(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    """All the records, or `limit` of them drawn with `seed` and kept in file order: every command's `--limit`
    draws this way, so two models evaluated with the same limit and seed see the same examples."""
    if limit is None or limit >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), limit))]


def _check_fields(spec: TaskSpec, records: list[Record], with_target: bool = True) -> None:
    """Every field the task reads (its answer fields only `with_target`) must be in every record: name the first
    record that lacks one."""
    kind = spec.handler
    needed = set(spec.input_fields) | set(kind.record_fields(spec, with_target))
    for template in spec.templates[:1]:
        needed.update(template_fields(template))
    for record in records:
        missing = sorted(f for f in needed if f not in record.fields)
        answer = kind.missing_answer(spec, record) if with_target else None
        if answer:
            missing.append(answer)
        if missing:
            raise DataError(
                f"{record.where}: task {spec.name} needs field(s) {', '.join(missing)}; "
                f"the record has {', '.join(record.fields)}"
            )
        problem = kind.record_problem(record, spec)
        if problem:
            raise DataError(f"task {spec.name}: {problem}")


def read_for_task(path: str, spec: TaskSpec, with_target: bool = True) -> list[Record]:
    """A data file read as records of `spec`: every record must parse and carry the fields the task reads (and,
    `with_target`, its answer), each checked as a run's own data is, so a bad one is named by file and line."""
    return check_for_task(read_file(path), spec, path, with_target)


def check_for_task(
    records: list[Record], spec: TaskSpec, path: str, with_target: bool = True, skip_invalid: bool = False
) -> list[Record]:
    """`read_for_task` on records already read from `path`; `skip_invalid` skips (and lists) a classification or
    generation task's invalid records instead of failing."""
    kind = spec.handler
    if kind.checked_as_run_data:
        data = spec.data_config(spec.max_length or 512)
        labels = list(spec.label_words) if kind.head_answers else None
        answered = with_target and kind.head_answers  # a reference may be a list, or in either of two fields
        records = enforce(check_records(records, kind, data, labels, answered), path, skip_invalid)
    bad = next((r for r in records if r.problem), None)
    if bad:
        raise DataError(f"{bad.where}: {bad.problem}")
    _check_fields(spec, records, with_target)
    return records


def suite_tasks(suite: Suite, limit: int | None = None, seed: int = 0) -> list[tuple[TaskSpec, list[Record]]]:
    """Each task of the suite with its records; `limit` caps every task's limit (for quick runs)."""
    chosen = []
    for entry in suite.tasks:
        spec = load_task(entry.task)
        caps = [c for c in (entry.limit, limit) if c]
        chosen.append((spec, load_records(spec, min(caps) if caps else None, seed)))
    return chosen
