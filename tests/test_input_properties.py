"""Property-based tests: whatever a user feeds the readers, `tunelab data check` and the override parser, the
answer is the records or an error naming the file (and line) or the key, never a traceback.

hypothesis generates the inputs: arbitrary bytes, arbitrary JSON values shaped as records, and arbitrary
`key.sub=value` strings over the real config keys.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.cli import main
from tunelab.config import ConfigError, RunConfig, load_config, parse_overrides
from tunelab.data.readers import read_file
from tunelab.records import DataError, Record

SUFFIXES = [".jsonl", ".json", ".csv", ".parquet"]
FIELDS = ["text", "label", "question", "answer", "prompt", "response", "body", ""]
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
records = st.lists(st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4), max_size=6)


def _as_jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8", "surrogatepass")


def _as_json(rows) -> bytes:
    return json.dumps(rows).encode("utf-8", "surrogatepass")


def _as_csv(rows) -> bytes:
    out = io.StringIO()
    columns = list(dict.fromkeys(key for row in rows for key in row))
    writer = csv.writer(out)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns])
    return out.getvalue().encode("utf-8", "surrogatepass")


file_contents = st.one_of(
    st.binary(max_size=400),
    st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    records.map(_as_jsonl),
    records.map(_as_json),
    records.map(_as_csv),
    json_values.map(lambda v: json.dumps(v).encode()),
)

_names = itertools.count()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _write(folder: Path, content: bytes, suffix: str) -> Path:
    path = folder / f"input-{next(_names)}{suffix}"
    path.write_bytes(content)
    return path


@FUZZ
@given(content=file_contents, suffix=st.sampled_from(SUFFIXES))
def test_readers_return_records_or_an_error_naming_the_file(content, suffix, folder):
    path = _write(folder, content, suffix)
    try:
        read = read_file(path)
    except DataError as exc:
        assert str(path) in str(exc)
        return
    assert read and all(isinstance(r, Record) and isinstance(r.fields, dict) for r in read)
    assert all(r.where.startswith(f"{path}:") for r in read)  # every record says where it came from


@FUZZ
@given(
    content=file_contents, suffix=st.sampled_from(SUFFIXES[:3]), task=st.sampled_from(["classification", "causal_lm"])
)
def test_data_check_accepts_or_names_the_file_and_line(content, suffix, task, folder, capsys):
    path = _write(folder, content, suffix)
    fields = [] if task == "classification" else ["data.prompt_field=question", "data.response_field=answer"]
    status = main(["data", "check", str(path), "--task", task, *fields])
    out, err = capsys.readouterr()
    if status == 0:
        assert out.startswith(f"{path}: ") and "valid records" in out
    else:
        assert status == 2 and err.startswith("error: ") and str(path) in err, err


def _config_keys(model=RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config, sections included (data, data.labels, method.lora.r, ...)."""
    keys = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += _config_keys(annotation, f"{key}.")
    return keys


override_keys = st.one_of(st.sampled_from(_config_keys()), st.text(max_size=12))
override_values = st.one_of(
    st.text(max_size=20),
    json_values.map(json.dumps),
    st.sampled_from(
        [
            "&a [*a]",
            "{0}",
            "'{x!r:d}'",
            ".inf",
            ".nan",
            "1e400",
            "!!binary aGk=",
            "[a, {b: c}]",
            "2020-01-01",
            "!!python/name:os.system",
            "'\\x00'",
        ]
    ),
)


@FUZZ
@given(key=override_keys, value=override_values)
def test_overrides_are_applied_or_refused_naming_the_key(key, value):
    item = f"{key}={value}"
    try:
        load_config(None, [item])
    except ConfigError as exc:
        assert key in str(exc) or "=" not in item, str(exc)


@FUZZ
@given(items=st.lists(st.text(max_size=30), max_size=4))
def test_any_override_strings_parse_or_are_refused(items):
    try:
        parse_overrides(items)
    except ConfigError as exc:
        assert any(item in str(exc) for item in items)
