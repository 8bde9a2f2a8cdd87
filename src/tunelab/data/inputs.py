"""What `tunelab predict` reads: a data file, or a .txt file with one text per line, as inputs of the task a run
answers, with the command line's `data.` overrides.

The overrides say where the file keeps what the run reads (`data.text_field=sentence` when its texts are in a
`sentence` column) and whether invalid records are skipped (`data.skip_invalid=true`), the same keys a training
run's data takes. A renamed column is read under the name the run was trained with, so the run's model and
template see the record as they would their own data.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import ConfigError, DataConfig, parse_overrides
from tunelab.data.readers import read_file
from tunelab.data.task_records import check_for_task
from tunelab.records import DataError, Record
from tunelab.render import template_fields
from tunelab.tasks import TaskSpec

INPUT_KEYS = ("text_field", "text_pair_field", "prompt_field", "skip_invalid")
"""The `data.` overrides that change how prediction inputs are read (labels and answers are not read)."""


def input_overrides(overrides: list[str]) -> dict:
    """The overrides as `data.` settings, validated as a run's would be; any other key is refused, naming the
    keys that predict takes."""
    changes = parse_overrides(overrides)
    data = changes.pop("data", {})
    unknown = [f"{section}.*" for section in changes]
    unknown += [f"data.{key}" for key in data if key not in INPUT_KEYS] if isinstance(data, dict) else ["data"]
    if unknown:
        allowed = ", ".join(f"data.{key}" for key in INPUT_KEYS)
        raise ConfigError(f"predict takes the overrides {allowed}; not {', '.join(unknown)}")
    try:
        return DataConfig.model_validate(data).model_dump(include=set(data))
    except ValueError as exc:
        raise ConfigError(f"predict overrides {' '.join(overrides)} are invalid: {exc}") from None


def _read_fields(spec: TaskSpec) -> dict[str, str | None]:
    """The field the run reads for each override key: a classifier's text (and pair), a one-field prompt's field."""
    prompt = template_fields(spec.templates[0]) if spec.templates else []
    return {
        "text_field": spec.input_fields[0] if spec.input_fields else None,
        "text_pair_field": spec.input_fields[1] if len(spec.input_fields) > 1 else None,
        "prompt_field": prompt[0] if len(prompt) == 1 else None,
    }


def _renamed(records: list[Record], settings: dict, spec: TaskSpec) -> list[Record]:
    """Each record with the columns the overrides name copied to the fields the run reads."""
    read = _read_fields(spec)
    moves = {}
    for key, column in settings.items():
        if key == "skip_invalid":
            continue
        if read[key] is None:
            raise ConfigError(
                f"data.{key}: task {spec.name} reads no such field (it reads {', '.join(spec.input_fields)})"
            )
        moves[column] = read[key]
    for record in records:
        for column, name in moves.items():
            if column in record.fields:
                record.fields[name] = record.fields[column]
    return records


def read_text_lines(path: Path, field: str) -> list[Record]:
    """A .txt file: each non-blank line one record holding its text in `field`, named path:line."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x}); save the file as UTF-8"
        ) from None
    records = [Record({field: line}, f"{path}:{number}") for number, line in enumerate(lines, 1) if line.strip()]
    if not records:
        raise DataError(f"{path} holds no records (no line holds text)")
    return records


def read_inputs(path: str, spec: TaskSpec, overrides: list[str]) -> list[Record]:
    """The records `tunelab predict` answers: checked as inputs of `spec` (no answer needed), invalid ones failing
    with file and line or, under `data.skip_invalid=true`, skipped and listed."""
    settings = input_overrides(overrides)
    file = Path(path)
    if file.suffix.lower() == ".txt":
        if len(spec.input_fields) > 1:
            raise DataError(
                f"{path}: a .txt file holds one text per line, but task {spec.name} reads "
                f"{', '.join(spec.input_fields)}; give a JSONL or CSV file with those columns"
            )
        records = read_text_lines(file, spec.input_fields[0])
    else:
        records = _renamed(read_file(file), settings, spec)
    return check_for_task(records, spec, path, with_target=False, skip_invalid=settings.get("skip_invalid", False))
