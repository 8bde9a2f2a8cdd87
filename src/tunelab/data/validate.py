"""Checking records against what a task needs, before any model loads.

A record is invalid when it did not parse, when a field the task reads is
missing or empty, or when its label is outside the label set. Invalid records
are an error naming file, line and field, unless the user opts into
`data.skip_invalid`, in which case they are skipped and counted, never silently.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from tunelab.config import DataConfig
from tunelab.kinds import Kind
from tunelab.records import DataError, Record

SHOWN_PROBLEMS = 10


@dataclass
class Checked:
    valid: list[Record]
    problems: list[str] = field(default_factory=list)
    """One 'file:line: field ...: what is wrong' line per invalid record."""


def _value_problem(value) -> str | None:
    """Why a field's value cannot be read as text, or None: the model reads every field as a string."""
    if isinstance(value, (dict, list, tuple)):
        return f"holds a {type(value).__name__}, not text"
    if isinstance(value, str):
        if not value.strip():
            return "is empty"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"is not valid text (a lone surrogate {value[exc.start]!a} at character {exc.start + 1})"
    return None


def _record_problem(
    record: Record, kind: Kind, data: DataConfig, needed: list[str], label_field: str | None, labels: list[str] | None
) -> str | None:
    if record.problem:
        return f"{record.where}: {record.problem}"
    structured = kind.record_problem(record, data)
    if structured:
        return structured
    for name in needed:
        if name not in record.fields or record.fields[name] is None:
            present = ", ".join(sorted(record.fields)) or "none"
            return f"{record.where}: field '{name}' is missing (fields present: {present})"
        problem = _value_problem(record.fields[name])
        if problem:
            return f"{record.where}: field '{name}' {problem}"
    if label_field and labels is not None:
        label = str(record.fields[label_field])
        if label not in labels:
            return f"{record.where}: field '{label_field}': label '{label}' is not in the label set {labels}"
    return None


def _setting_of(name: str, data: DataConfig) -> str:
    """The `data.` key that names field `name`, for the override that points it at another column."""
    keys = ("text_field", "text_pair_field", "label_field", "prompt_field", "response_field")
    return next((f"data.{key}" for key in keys if getattr(data, key) == name), "data.prompt_template")


def _check_columns(records: list[Record], needed: list[str], data: DataConfig) -> None:
    """A field that no record has is a column the file lacks: one error naming the columns it has and the setting
    to change, rather than the same line for every record."""
    parsed = [record for record in records if not record.problem]
    columns = sorted({name for record in parsed for name in record.fields})
    for name in needed:
        if parsed and all(name not in record.fields for record in parsed):
            setting = _setting_of(name, data)
            unused = [column for column in columns if column not in needed]
            guess = (difflib.get_close_matches(name, unused, n=1, cutoff=0.3) or unused or ["COLUMN"])[0]
            how = (
                "Change data.prompt_template to read the file's columns"
                if setting == "data.prompt_template"
                else f"Point {setting} at the column that holds it, e.g. {setting}={guess}"
            )
            source = re.sub(r"(:(item |row )?\d+| row \d+)$", "", parsed[0].where)
            raise DataError(
                f"{source}: no record has field '{name}' ({setting}; all {len(parsed)} records checked); "
                f"the file's columns are: {', '.join(columns) or 'none'}. {how}."
            )


def check_records(
    records: list[Record],
    kind: Kind,
    data: DataConfig,
    labels: list[str] | None,
    with_target: bool = True,
) -> Checked:
    """Split records into valid ones and one problem line per invalid one; a field that no record has is one
    error about the file's columns."""
    needed = kind.run_fields(data, with_target)
    _check_columns(records, needed, data)
    label_field = kind.answer_field(data) if kind.head_answers and with_target else None
    checked = Checked(valid=[])
    for record in records:
        problem = _record_problem(record, kind, data, needed, label_field, labels)
        if problem:
            checked.problems.append(problem)
        else:
            checked.valid.append(record)
    return checked


def enforce(checked: Checked, name: str, skip_invalid: bool) -> list[Record]:
    """Fail on invalid records, or (opt-in) skip them with a report; never drop silently."""
    if not checked.problems:
        return checked.valid
    shown = "\n".join(f"  {p}" for p in checked.problems[:SHOWN_PROBLEMS])
    more = len(checked.problems) - SHOWN_PROBLEMS
    listing = shown + (f"\n  ... and {more} more" if more > 0 else "")
    if not skip_invalid:
        raise DataError(
            f"{len(checked.problems)} invalid record(s) in {name}:\n{listing}\n"
            "Fix them, or set data.skip_invalid=true to skip invalid records (they will be counted and listed)."
        )
    print(f"warning: skipped {len(checked.problems)} invalid record(s) in {name} (data.skip_invalid=true):\n{listing}")
    return checked.valid
