"""Reading records from JSONL, CSV, Parquet, a directory of split files, or a Hugging Face dataset.

Every record keeps where it came from (file and line, or dataset and row) so
that validation errors can point at it. Reading never drops anything: a line
that cannot be parsed becomes a `Record` with a `problem`, and validation
decides (fail, or skip and report when `data.skip_invalid` is set).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

from tunelab.records import DataError, Record

SPLIT_NAMES = {
    "train": ("train",),
    "validation": ("validation", "valid", "val", "dev"),
    "test": ("test",),
}
SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


def _malformed(exc: json.JSONDecodeError) -> str:
    """A JSON syntax error as our messages word it. The json module's text for a raw control character ends in
    'at' (its own str() appends the position), which ours would double; the fix for that one is an escape."""
    message = f"malformed JSON: {exc.msg.removesuffix(' at')} at column {exc.colno}"
    if exc.msg.startswith("Invalid control character"):
        message += "; write a tab or line break inside a string as \\t or \\n"
    return message


def _read_jsonl(path: Path) -> list[Record]:
    records = []
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")  # a leading BOM is not part of the JSON
            except UnicodeDecodeError as exc:
                records.append(
                    Record(
                        {}, where, f"not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at column {exc.start + 1})"
                    )
                )
                continue
            if not line.strip():
                continue  # blank lines (e.g. a trailing newline) are not records
            try:
                value = json.loads(line)
            except json.JSONDecodeError as exc:
                records.append(Record({}, where, _malformed(exc)))
                continue
            except RecursionError:
                records.append(Record({}, where, "JSON nested too deeply to read"))
                continue
            if not isinstance(value, dict):
                records.append(Record({}, where, f"expected a JSON object, got {type(value).__name__}"))
                continue
            records.append(Record(value, where))
    return records


def _read_json(path: Path) -> list[Record]:
    """A .json file: a JSON array of objects, or JSON Lines under a .json name."""
    text = path.read_bytes().lstrip(b"\xef\xbb\xbf").lstrip()
    if not text.startswith(b"["):
        return _read_jsonl(path)
    try:
        rows = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{path}: not valid UTF-8 (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save the file as UTF-8"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: {_malformed(exc)}") from None
    except RecursionError:
        raise DataError(f"{path}: JSON nested too deeply to read") from None
    return [
        Record(row, f"{path}:item {i + 1}")
        if isinstance(row, dict)
        else Record({}, f"{path}:item {i + 1}", f"expected a JSON object, got {type(row).__name__}")
        for i, row in enumerate(rows)
    ]


def _read_csv(path: Path) -> list[Record]:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None
    csv.field_size_limit(sys.maxsize)  # a long review or article is a record, not an error
    # csv.reader (not DictReader) yields blank lines as empty rows, so each row's first line is simply the
    # line after the previous row's last one, quoted newlines included.
    reader = csv.reader(io.StringIO(text, newline=""))
    records = []
    end = 0
    try:
        header = next(reader, None)
        if header is not None:
            _check_header(path, header)
        end = reader.line_num
        for row in reader:
            where = f"{path}:{end + 1}"
            end = reader.line_num
            if not row:
                continue  # a blank line is not a record
            if len(row) > len(header):
                records.append(Record({}, where, f"more columns than the header's {len(header)}"))
                continue
            records.append(Record(dict(zip(header, row)), where))
    except csv.Error as exc:  # Python 3.10 refuses NUL bytes
        raise DataError(f"{path}:{reader.line_num}: not readable as CSV ({exc})") from None
    return records


def _check_header(path: Path, header: list[str]) -> None:
    """Columns are record fields: a repeated name would silently keep only one of its columns."""
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise DataError(
            f"{path}:1: the header names column(s) {', '.join(map(repr, repeated))} more than once; "
            "give every column its own name"
        )


def _read_parquet(path: Path) -> list[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc})") from None
    return [Record(row, f"{path}:row {i + 1}") for i, row in enumerate(rows)]


_READERS = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}


def read_file(path: str | Path) -> list[Record]:
    """Read one data file by its extension; DataError for a file that holds no records at all."""
    path = Path(path)
    if not path.exists():
        looked = "" if path.is_absolute() else f" (looked for {path.absolute()})"
        raise DataError(f"data file {path} does not exist{looked}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give a data file ({', '.join(SUFFIXES)})")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(f"{path}: unsupported file type '{path.suffix.lower()}'; use one of {', '.join(SUFFIXES)}")
    records = reader(path)
    if not records:
        what = "the file is empty" if path.stat().st_size == 0 else "only blank lines, a header or an empty list"
        raise DataError(f"{path} holds no records ({what})")
    return records


def find_split_files(directory: Path) -> dict[str, Path]:
    """The split files in a directory, e.g. train.jsonl, dev.csv, test.parquet."""
    found: dict[str, Path] = {}
    for split, names in SPLIT_NAMES.items():
        for name in names:
            for suffix in SUFFIXES:
                candidate = directory / f"{name}{suffix}"
                if candidate.exists() and split not in found:
                    found[split] = candidate
    if not found:
        raise DataError(
            f"directory {directory} holds no split files; expected train/validation/test "
            f"with one of {', '.join(SUFFIXES)} (e.g. train.jsonl)"
        )
    return found


def _read_hub_dataset(spec: str) -> dict[str, list[Record]]:
    """`hf:NAME` or `hf:NAME:CONFIG` through `datasets` (needs network access to the hub)."""
    import datasets

    _, _, rest = spec.partition(":")
    name, _, config = rest.partition(":")
    loaded = datasets.load_dataset(name, config or None)
    splits: dict[str, list[Record]] = {}
    for split_name, dataset in loaded.items():
        split = next((s for s, names in SPLIT_NAMES.items() if split_name in names), split_name)
        splits[split] = [Record(dict(row), f"{spec}[{split_name}] row {i + 1}") for i, row in enumerate(dataset)]
    return splits


def read_source(spec: str) -> dict[str, list[Record]]:
    """Read a data source into named splits: a file gives {'data': ...}, a directory or hub dataset its splits."""
    if spec.startswith("hf:"):
        return _read_hub_dataset(spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        return {split: read_file(file) for split, file in find_split_files(path).items()}
    return {"data": read_file(path)}
