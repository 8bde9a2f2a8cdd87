"""Ratings collected outside tunelab: a CSV of scores per sheet, item and rater, imported all or nothing."""

from __future__ import annotations

import csv
from contextlib import closing
from pathlib import Path

from tunelab.eval.human.store import CRITERIA, SCORES, HumanEvalError, connect, known_sheets, save_rating, transaction


def _check_header(path: Path, fieldnames: list[str] | None, expected: list[str]) -> None:
    found = [name.strip() for name in fieldnames or []]
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if missing or extra:
        problems = ([f"missing column(s) {', '.join(missing)}"] if missing else []) + (
            [f"unexpected column(s) {', '.join(extra)}"] if extra else []
        )
        raise HumanEvalError(f"{path}, line 1: {'; '.join(problems)}; the header must be exactly {','.join(expected)}")


def _parse_row(
    path: Path, line: int, row: dict[str, str], rater_column: str, items: set[tuple[str, str]], sheets: list[str]
) -> tuple[str, str, str, dict[str, int]]:
    """(sheet, item_id, rater, {criterion: score}) of one CSV row, or an error naming file, line and column."""

    def fail(column: str, problem: str) -> HumanEvalError:
        return HumanEvalError(
            f"{path}, line {line}, column {column}: {problem}; fix the row and import again (nothing was imported)"
        )

    sheet, item_id, rater = (row[column].strip() for column in ("sheet", "item_id", rater_column))
    if sheet not in sheets:
        raise fail("sheet", f"unknown sheet '{sheet}' (known sheets: {', '.join(sheets) or 'none'})")
    if (sheet, item_id) not in items:
        raise fail("item_id", f"sheet '{sheet}' has no item '{item_id}'")
    if not rater:
        raise fail(rater_column, "the rater name is empty")
    scores = {}
    for criterion in CRITERIA:
        value = row[criterion].strip()
        if not (value.isdigit() and int(value) in SCORES):
            raise fail(criterion, f"score '{value}' is not a whole number from 1 to 5")
        scores[criterion] = int(value)
    return sheet, item_id, rater, scores


def import_csv(path: Path, rater_column: str = "rater") -> int:
    """Import ratings from a CSV with the columns sheet, item_id, <rater_column>, fluency, coherence, relevance.

    Every row is checked before anything is stored, then all are stored in one
    transaction: a file with one bad row imports nothing, so fixing and
    re-importing it never double-counts. Scores replace a rater's earlier ones.
    Returns the number of rows (rated items) imported.
    """
    path = Path(path)
    expected = ["sheet", "item_id", rater_column, *CRITERIA]
    with closing(connect()) as connection:
        sheets = known_sheets(connection)
        items = set(connection.execute("SELECT sheet, item_id FROM items"))
        with path.open(encoding="utf-8-sig", newline="") as handle:
            reader = csv.DictReader(handle, skipinitialspace=True)
            _check_header(path, reader.fieldnames, expected)
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
            parsed, seen = [], {}
            for row in reader:
                if None in row or None in row.values():
                    raise HumanEvalError(
                        f"{path}, line {reader.line_num}: the row does not have the header's "
                        f"{len(expected)} fields; fix the row and import again (nothing was imported)"
                    )
                entry = _parse_row(path, reader.line_num, row, rater_column, items, sheets)
                if entry[:3] in seen:
                    raise HumanEvalError(
                        f"{path}, line {reader.line_num}: repeats the ratings of line {seen[entry[:3]]} "
                        f"(same sheet, item_id and {rater_column}); keep one of them"
                    )
                seen[entry[:3]] = reader.line_num
                parsed.append(entry)
        if not parsed:
            raise HumanEvalError(f"{path} holds no rating rows under its header")
        with transaction(connection):
            for sheet, item_id, rater, scores in parsed:
                for criterion, score in scores.items():
                    save_rating(connection, sheet, item_id, rater, criterion, score)
    return len(parsed)
