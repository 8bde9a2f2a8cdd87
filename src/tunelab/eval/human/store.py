"""The ratings database, `$TUNELAB_HOME/human.db`: sheets, their blind items and every score a rater gave.

Every rating is committed as soon as it is given (WAL journal), so a killed rating session loses at most the score
being typed; exports and CSV imports are all-or-nothing transactions instead.
"""

from __future__ import annotations

import sqlite3
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from tunelab.config import tunelab_home
from tunelab.eval import EvaluationError

CRITERIA = ("fluency", "coherence", "relevance")
SCORES = range(1, 6)

SCHEMA = """
CREATE TABLE IF NOT EXISTS sheets (
    name TEXT PRIMARY KEY,
    system_a TEXT NOT NULL,
    system_b TEXT NOT NULL,
    csv_path TEXT NOT NULL,
    seed INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS items (
    sheet TEXT NOT NULL REFERENCES sheets(name),
    item_id TEXT NOT NULL,
    system TEXT NOT NULL,
    prompt_index INTEGER NOT NULL,
    prompt TEXT NOT NULL,
    output TEXT NOT NULL,
    position INTEGER NOT NULL,
    PRIMARY KEY (sheet, item_id)
);
CREATE TABLE IF NOT EXISTS ratings (
    sheet TEXT NOT NULL,
    item_id TEXT NOT NULL,
    rater TEXT NOT NULL,
    criterion TEXT NOT NULL CHECK (criterion IN ('fluency', 'coherence', 'relevance')),
    score INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    rated_at TEXT NOT NULL,
    PRIMARY KEY (sheet, item_id, rater, criterion),
    FOREIGN KEY (sheet, item_id) REFERENCES items(sheet, item_id)
);
"""
"""`items.position` is the item's row in the CSV, so raters work through the sheet in its (shuffled) order."""


class HumanEvalError(EvaluationError):
    """A human-evaluation request that cannot be done as asked; the message says what to do instead."""


def db_path() -> Path:
    return tunelab_home() / "human.db"


def connect() -> sqlite3.Connection:
    """An autocommit connection: each statement outside an explicit transaction is durable when it returns."""
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.executescript(SCHEMA)
    return connection


@contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """All or nothing: used where a half-written sheet or import would be worse than none."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def known_sheets(connection: sqlite3.Connection) -> list[str]:
    return [name for (name,) in connection.execute("SELECT name FROM sheets ORDER BY name")]


def require_sheet(connection: sqlite3.Connection, sheet: str) -> tuple[str, str]:
    """The sheet's (system A, system B), or an error listing the sheets there are."""
    row = connection.execute("SELECT system_a, system_b FROM sheets WHERE name = ?", (sheet,)).fetchone()
    if row is None:
        known = known_sheets(connection)
        listing = (
            f"known sheets: {', '.join(known)}" if known else "no sheets yet: create one with `tunelab human export`"
        )
        raise HumanEvalError(f"unknown sheet '{sheet}' in {db_path()}; {listing}")
    return row


def require_rater(rater: str) -> None:
    if not rater.strip():
        raise HumanEvalError("give a rater name, so your scores can be told from other raters'")


def save_rating(
    connection: sqlite3.Connection, sheet: str, item_id: str, rater: str, criterion: str, score: int
) -> None:
    """Store one score, replacing the rater's earlier score for the same item and criterion."""
    connection.execute(
        "INSERT INTO ratings (sheet, item_id, rater, criterion, score, rated_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sheet, item_id, rater, criterion) DO UPDATE SET score = excluded.score, rated_at = excluded.rated_at",
        (sheet, item_id, rater, criterion, score, now()),
    )


def pending_items(
    connection: sqlite3.Connection, sheet: str, rater: str
) -> tuple[list[tuple[str, str, str, list[str]]], int]:
    """The items the rater has not fully rated, in sheet order, each with its missing criteria; and the item count."""
    rated = defaultdict(set)
    for item_id, criterion in connection.execute(
        "SELECT item_id, criterion FROM ratings WHERE sheet = ? AND rater = ?", (sheet, rater)
    ):
        rated[item_id].add(criterion)
    items = connection.execute(
        "SELECT item_id, prompt, output FROM items WHERE sheet = ? ORDER BY position", (sheet,)
    ).fetchall()
    pending = [
        (item_id, prompt, output, [c for c in CRITERIA if c not in rated[item_id]])
        for item_id, prompt, output in items
        if not rated[item_id] >= set(CRITERIA)
    ]
    return pending, len(items)
