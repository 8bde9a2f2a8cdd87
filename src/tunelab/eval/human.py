"""Human evaluation of generated text: blind rating sheets, ratings in SQLite, and a report.

Automatic metrics (ROUGE, exact match) say little about whether an answer reads
well, so people rate outputs of two systems side by side: the base model and a
tuned run, or two tuned runs. The flow:

    export_sheet   generate both systems' outputs for the first N test prompts and write a
                   blind CSV (item_id, prompt, output) in shuffled order, with opaque ids;
                   the key (item -> system) goes to SQLite and `<sheet>.key.json`
    rate_interactive / import_csv
                   collect 1-5 scores for fluency, coherence and relevance per item and rater
    report / render_report
                   per-system means with 95% CIs, B's win rate over A, Krippendorff's alpha

Everything lives in `$TUNELAB_HOME/human.db`. Every rating is committed as soon
as it is given (WAL journal), so a killed rating session loses at most the score
being typed.
"""

from __future__ import annotations

import csv
import io
import random
import secrets
import sqlite3
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import krippendorff
import numpy as np

from tunelab.config import tunelab_home
from tunelab.eval import EvaluationError
from tunelab.runs import RunDir, write_atomic, write_json

CRITERIA = ("fluency", "coherence", "relevance")
SCORES = range(1, 6)
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
GENERATION_TASKS = ("causal_lm", "seq2seq")
TRAINING_ONLY_DATA_FIELDS = {
    "validation",
    "validation_fraction",
    "max_train_examples",
    "max_target_length",
    "response_field",
}
"""Data settings that cannot change a run's test prompts, so two runs may differ in them and still be compared."""

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


@dataclass
class SystemOutputs:
    """One system's name and its outputs, one per prompt, in prompt order."""

    name: str
    outputs: list[str]


# --- storage ---------------------------------------------------------------------------------------------------


def db_path() -> Path:
    return tunelab_home() / "human.db"


def _connect() -> sqlite3.Connection:
    """An autocommit connection: each statement outside an explicit transaction is durable when it returns."""
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, isolation_level=None, timeout=30)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.executescript(SCHEMA)
    return connection


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """All or nothing: used where a half-written sheet or import would be worse than none."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _known_sheets(connection: sqlite3.Connection) -> list[str]:
    return [name for (name,) in connection.execute("SELECT name FROM sheets ORDER BY name")]


def _require_sheet(connection: sqlite3.Connection, sheet: str) -> tuple[str, str]:
    """The sheet's (system A, system B), or an error listing the sheets there are."""
    row = connection.execute("SELECT system_a, system_b FROM sheets WHERE name = ?", (sheet,)).fetchone()
    if row is None:
        known = _known_sheets(connection)
        listing = (
            f"known sheets: {', '.join(known)}" if known else "no sheets yet: create one with `tunelab human export`"
        )
        raise HumanEvalError(f"unknown sheet '{sheet}' in {db_path()}; {listing}")
    return row


def _save_rating(
    connection: sqlite3.Connection, sheet: str, item_id: str, rater: str, criterion: str, score: int
) -> None:
    """Store one score, replacing the rater's earlier score for the same item and criterion."""
    connection.execute(
        "INSERT INTO ratings (sheet, item_id, rater, criterion, score, rated_at) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (sheet, item_id, rater, criterion) DO UPDATE SET score = excluded.score, rated_at = excluded.rated_at",
        (sheet, item_id, rater, criterion, score, _now()),
    )


# --- export ----------------------------------------------------------------------------------------------------


def _check_generation_run(run: RunDir) -> None:
    """Only generated text can be rated, and only a finished run has a tuned model to generate it."""
    config = run.config()
    if config.task_type not in GENERATION_TASKS:
        raise HumanEvalError(
            f"run {run.path} is a {config.task_type} run; human rating is for generated text "
            f"({' or '.join(GENERATION_TASKS)} runs). Score a classifier with `tunelab eval`"
        )
    run.require_complete()


def _test_prompt_settings(run: RunDir) -> dict:
    """The settings that decide a run's test prompts: its data section, or, for a mixture, how its test draws are made."""
    config = run.config()
    if config.mixture is None:
        return {
            f"data.{key}": value
            for key, value in config.data.model_dump().items()
            if key not in TRAINING_ONLY_DATA_FIELDS
        }
    return {
        "mixture.eval_examples": config.mixture.eval_examples,
        "training.seed": config.training.seed,
        "data.max_length": config.data.max_length,
    }


def _check_same_prompts(run_a: RunDir, run_b: RunDir) -> None:
    """Two runs are only comparable item by item when their test prompts are the same."""
    if run_a.path.resolve() == run_b.path.resolve():
        raise HumanEvalError(
            f"both systems are run {run_a.path}; give two different runs, or one run to compare with its base model"
        )
    settings_a, settings_b = _test_prompt_settings(run_a), _test_prompt_settings(run_b)
    differing = [
        f"{key}: {settings_a.get(key)!r} vs {settings_b.get(key)!r}"
        for key in settings_a.keys() | settings_b.keys()
        if settings_a.get(key) != settings_b.get(key)
    ]
    if differing:
        raise HumanEvalError(
            f"runs {run_a.path} and {run_b.path} do not share their test data and prompt template ("
            + "; ".join(differing)
            + "); compare runs trained on the same data, or compare each with its base model"
        )


def _system_names(run_a: RunDir, run_b: RunDir | None) -> tuple[str, str]:
    """Readable, distinct system names: the run folder names, or the base model's name for a base."""
    if run_b is None:
        return f"base {run_a.config().model.name}", f"tuned {run_a.path.name}"
    if run_a.path.name == run_b.path.name:
        return f"tuned {run_a.path}", f"tuned {run_b.path}"
    return f"tuned {run_a.path.name}", f"tuned {run_b.path.name}"


def _generate_outputs(
    run_a: RunDir, run_b: RunDir | None, n: int, task: str | None
) -> tuple[list[str], list[str], list[str]]:
    """The first n test prompts of the run's task (`task` names one of a mixture's) and the answers of system A
    and B to them, one model in memory at a time.

    The model stack is imported here so that rating and reporting never pay for loading torch.
    """
    from tunelab.data.taskset import task_specs, test_records
    from tunelab.eval.runner import answers
    from tunelab.eval.targets import load_target

    config = run_a.config()
    spec = task_specs(config, run_a.state().get("labels")).pick(task)
    records = test_records(config, spec)
    if n < 1 or n > len(records):
        raise HumanEvalError(
            f"run {run_a.path} has {len(records)} test records of task {spec.name}; ask for between 1 "
            f"and {len(records)} (--n)"
        )
    records = records[:n]
    system_a = config.model.name if run_b is None else str(run_a.path)
    outputs = []
    for reference in (system_a, str((run_b or run_a).path)):
        target = load_target(reference).for_task(spec.name)
        outputs.append(answers(target, spec, records))
        del target
    return [spec.prompt(record) for record in records], outputs[0], outputs[1]


def _sheet_paths(output: Path) -> tuple[str, Path]:
    """The sheet's name (the CSV's stem) and its key file next to the CSV."""
    return output.stem, output.with_name(f"{output.stem}.key.json")


def _refuse_existing(output: Path) -> None:
    """Never overwrite a sheet: ratings already collected refer to its item ids."""
    sheet, key_path = _sheet_paths(output)
    for path in (output, key_path):
        if path.exists():
            raise HumanEvalError(
                f"{path} already exists; choose another --output name (the sheet name is the file's stem)"
            )
    with closing(_connect()) as connection:
        if connection.execute("SELECT 1 FROM sheets WHERE name = ?", (sheet,)).fetchone():
            raise HumanEvalError(
                f"a sheet named '{sheet}' is already in {db_path()}; choose another --output name "
                "(the sheet name is the file's stem)"
            )


def _blind_rows(prompts: list[str], a: SystemOutputs, b: SystemOutputs, seed: int) -> list[dict]:
    """Both systems' items in seeded random order, with random ids that carry nothing about the system.

    The ids are handed out in sorted order, so the CSV also reads in id order, handy for finding an item.
    """
    rows = [
        {"system": system.name, "prompt_index": index, "prompt": prompt, "output": system.outputs[index]}
        for index, prompt in enumerate(prompts)
        for system in (a, b)
    ]
    random.Random(seed).shuffle(rows)
    ids: set[str] = set()
    while len(ids) < len(rows):
        ids.add(secrets.token_hex(4))
    for row, item_id in zip(rows, sorted(ids)):
        row["item_id"] = item_id
    return rows


def _csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=["item_id", "prompt", "output"], extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_sheet(output: Path, prompts: list[str], a: SystemOutputs, b: SystemOutputs, seed: int = 0) -> Path:
    """Write the blind CSV and its key (SQLite and `<sheet>.key.json`) for outputs already generated.

    The database rows are committed only after both files are written, so a
    failed export never leaves a sheet in the database without its CSV and key.
    """
    if not (len(a.outputs) == len(b.outputs) == len(prompts)):
        raise HumanEvalError(
            f"{len(prompts)} prompts but {len(a.outputs)} outputs of {a.name} and {len(b.outputs)} of {b.name}"
        )
    if a.name == b.name:
        raise HumanEvalError(f"both systems are named '{a.name}'; give them distinct names")
    _refuse_existing(output)
    sheet, key_path = _sheet_paths(output)
    rows = _blind_rows(prompts, a, b, seed)
    key = {
        "sheet": sheet,
        "systems": {"A": a.name, "B": b.name},
        "seed": seed,
        "items": {row["item_id"]: {"system": row["system"], "prompt_index": row["prompt_index"]} for row in rows},
    }
    with closing(_connect()) as connection, _transaction(connection):
        connection.execute(
            "INSERT INTO sheets VALUES (?, ?, ?, ?, ?, ?)",
            (sheet, a.name, b.name, str(output.resolve()), seed, _now()),
        )
        connection.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (sheet, r["item_id"], r["system"], r["prompt_index"], r["prompt"], r["output"], position)
                for position, r in enumerate(rows)
            ],
        )
        write_json(key_path, key)
        write_atomic(output, _csv_text(rows))
    return output


def export_sheet(
    run_a: RunDir, run_b: RunDir | None, n: int, output: Path, seed: int = 0, task: str | None = None
) -> Path:
    """Generate and write a blind rating sheet for the first n test prompts of a generation run (of its task
    `task`, for a mixture).

    With one run, system A is its base model and B the tuned run; with two, A and
    B are the two tuned runs, which must share their test data and prompt
    template. Returns the CSV path; the sheet's name is its stem.
    """
    output = Path(output)
    for run in (run_a, run_b):
        if run is not None:
            _check_generation_run(run)
    if run_b is not None:
        _check_same_prompts(run_a, run_b)
    _refuse_existing(output)  # before minutes of generation, not after
    names = _system_names(run_a, run_b)
    prompts, outputs_a, outputs_b = _generate_outputs(run_a, run_b, n, task)
    return write_sheet(output, prompts, SystemOutputs(names[0], outputs_a), SystemOutputs(names[1], outputs_b), seed)


# --- interactive rating ----------------------------------------------------------------------------------------


def _pending(
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


def _ask_score(criterion: str, input: Callable[[str], str], output: Callable[[str], None]) -> int | None:
    """A 1-5 score for the criterion, asking again until one is given; None when the rater quits."""
    while True:
        try:
            answer = input(f"  {criterion} (1-5, q to quit): ").strip()
        except EOFError:
            return None
        if answer.lower() == "q":
            return None
        if answer.isdigit() and int(answer) in SCORES:
            return int(answer)
        output(f"  '{answer}' is not a score: type a whole number from 1 to 5 for {criterion}, or q to quit")


def rate_interactive(
    sheet: str, rater: str, input: Callable[[str], str] = input, output: Callable[[str], None] = print
) -> int:
    """Rate a sheet's items in the terminal, resuming where this rater left off.

    Each score is committed the moment it is typed, so quitting (q, end of input)
    or a killed session keeps everything rated so far. Returns how many items
    the rater finished in this session.
    """
    _require_rater(rater)
    with closing(_connect()) as connection:
        _require_sheet(connection, sheet)
        pending, total = _pending(connection, sheet, rater)
        output(
            f"sheet {sheet}, rater {rater}: {total - len(pending)} of {total} items rated, {len(pending)} to go. "
            f"Score each output 1 (poor) to 5 (excellent) for {', '.join(CRITERIA)}; q quits, your scores are kept."
        )
        for finished, (item_id, prompt, text, missing) in enumerate(pending):
            output(
                f"\n--- item {item_id} ({total - len(pending) + finished + 1} of {total}) ---\nPROMPT:\n{prompt}\n\nOUTPUT:\n{text}\n"
            )
            for criterion in missing:
                score = _ask_score(criterion, input, output)
                if score is None:
                    done = total - len(pending) + finished
                    output(
                        f"stopped: {done} of {total} items fully rated, {total - done} remain; "
                        f"run the same command again to continue"
                    )
                    return finished
                _save_rating(connection, sheet, item_id, rater, criterion, score)
        output(f"done: all {total} items of sheet {sheet} are rated by {rater}")
        return len(pending)


# --- rating in pairs (the web app) ----------------------------------------------------------------------------


@dataclass
class PendingPair:
    """A prompt whose outputs one rater has not fully rated: both systems' items, in the sheet's shuffled order,
    so the rater sees two blind outputs side by side without knowing which system wrote which."""

    prompt: str
    item_ids: list[str]
    outputs: list[str]
    number: int
    """This pair's place among the sheet's pairs, counting from 1."""
    total: int


def sheet_progress() -> list[dict]:
    """Every sheet with its item count and how many items each rater has fully rated (no system names: a rater
    picks a sheet from this list, and the key stays hidden)."""
    with closing(_connect()) as connection:
        sheets = []
        for name in _known_sheets(connection):
            items = connection.execute("SELECT COUNT(*) FROM items WHERE sheet = ?", (name,)).fetchone()[0]
            done = connection.execute(
                "SELECT rater, COUNT(*) FROM (SELECT rater, item_id FROM ratings WHERE sheet = ? "
                "GROUP BY rater, item_id HAVING COUNT(*) = ?) GROUP BY rater ORDER BY rater",
                (name, len(CRITERIA)),
            ).fetchall()
            sheets.append({"name": name, "items": items, "rated": dict(done)})
        return sheets


def next_pair(sheet: str, rater: str) -> PendingPair | None:
    """The first pair, in sheet order, that the rater has not fully rated; None when every item is rated.

    Pairs are ordered by their first item's position, and within a pair the items keep their positions, so the
    order and the sides are the shuffled sheet's, the same for every rater."""
    _require_rater(rater)
    with closing(_connect()) as connection:
        _require_sheet(connection, sheet)
        pending, _ = _pending(connection, sheet, rater)
        items = connection.execute(
            "SELECT item_id, prompt_index, prompt, output FROM items WHERE sheet = ? ORDER BY position", (sheet,)
        ).fetchall()
    pairs: dict[int, list[tuple[str, str, str]]] = {}
    for item_id, prompt_index, prompt, output in items:
        pairs.setdefault(prompt_index, []).append((item_id, prompt, output))
    unrated = {item_id for item_id, *_ in pending}
    for number, pair in enumerate(pairs.values(), start=1):
        if any(item_id in unrated for item_id, _, _ in pair):
            return PendingPair(pair[0][1], [i for i, _, _ in pair], [o for _, _, o in pair], number, len(pairs))
    return None


def save_pair(sheet: str, rater: str, scores: dict[str, dict[str, int]]) -> None:
    """Store a rater's scores for one pair: every criterion of every item, 1-5, all committed together.

    The scores must cover one pair of the sheet, whole; anything else is refused before a score is written, with
    the item and criterion named. Re-rating replaces the rater's earlier scores."""
    _require_rater(rater)
    with closing(_connect()) as connection:
        _require_sheet(connection, sheet)
        indexes = dict(connection.execute("SELECT item_id, prompt_index FROM items WHERE sheet = ?", (sheet,)))
        unknown = [item_id for item_id in scores if item_id not in indexes]
        if unknown:
            raise HumanEvalError(f"item(s) {', '.join(unknown)} are not in sheet '{sheet}'")
        prompts = {indexes[item_id] for item_id in scores}
        if len(prompts) > 1:
            raise HumanEvalError("rate the outputs of one prompt together, not of several")
        pair = [item_id for item_id, index in indexes.items() if index in prompts]
        for item_id in pair:
            for criterion in CRITERIA:
                score = scores.get(item_id, {}).get(criterion)
                if score not in SCORES:
                    raise HumanEvalError(f"item {item_id}: {criterion} needs a whole score from 1 to 5, got {score!r}")
        with _transaction(connection):
            for item_id, given in scores.items():
                for criterion in CRITERIA:
                    _save_rating(connection, sheet, item_id, rater, criterion, given[criterion])


def _require_rater(rater: str) -> None:
    if not rater.strip():
        raise HumanEvalError("give a rater name, so your scores can be told from other raters'")


# --- CSV import ------------------------------------------------------------------------------------------------


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
    with closing(_connect()) as connection:
        sheets = _known_sheets(connection)
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
        with _transaction(connection):
            for sheet, item_id, rater, scores in parsed:
                for criterion, score in scores.items():
                    _save_rating(connection, sheet, item_id, rater, criterion, score)
    return len(parsed)


# --- report ----------------------------------------------------------------------------------------------------


class _Rating(NamedTuple):
    item_id: str
    system: str
    prompt_index: int
    rater: str
    criterion: str
    score: int


def _mean_with_ci(scores_by_item: dict[str, list[int]], rng: np.random.Generator) -> dict:
    """Mean of all ratings with a 95% percentile bootstrap CI that resamples items (ratings of one item stay together)."""
    groups = [np.array(scores, dtype=float) for scores in scores_by_item.values()]
    count = sum(len(group) for group in groups)
    if not count:
        return {"mean": None, "ci_low": None, "ci_high": None, "ratings": 0, "items": 0}
    sums = np.array([group.sum() for group in groups])
    sizes = np.array([len(group) for group in groups])
    picks = rng.integers(0, len(groups), size=(BOOTSTRAP_RESAMPLES, len(groups)))
    resampled = sums[picks].sum(axis=1) / sizes[picks].sum(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    return {
        "mean": float(sums.sum() / count),
        "ci_low": float(low),
        "ci_high": float(high),
        "ratings": int(count),
        "items": len(groups),
    }


def _win_rate(by_prompt: dict[int, dict[str, list[int]]], system_a: str, system_b: str) -> dict:
    """Shares of prompts where B's mean score (over raters) beats, ties or loses to A's; exact fractions decide ties."""
    outcomes = {"win": 0, "tie": 0, "loss": 0}
    for systems in by_prompt.values():
        if systems.get(system_a) and systems.get(system_b):
            a, b = (Fraction(sum(systems[s]), len(systems[s])) for s in (system_a, system_b))
            outcomes["win" if b > a else "tie" if b == a else "loss"] += 1
    compared = sum(outcomes.values())
    shares = {key: (value / compared if compared else None) for key, value in outcomes.items()}
    return {**shares, "prompts": compared}


def _agreement_matrix(ratings: list[tuple[str, str, int]]) -> np.ndarray:
    """Raters x items matrix of (rater, item_id, score) triples, NaN where a rater did not rate an item."""
    raters = sorted({rater for rater, _, _ in ratings})
    items = sorted({item for _, item, _ in ratings})
    matrix = np.full((len(raters), len(items)), np.nan)
    for rater, item, score in ratings:
        matrix[raters.index(rater), items.index(item)] = score
    return matrix


def _alpha(ratings: list[tuple[str, str, int]]) -> dict:
    """Krippendorff's ordinal alpha over items, or None with the reason it is undefined."""
    matrix = _agreement_matrix(ratings)
    raters = matrix.shape[0]
    shared = int((np.sum(~np.isnan(matrix), axis=0) >= 2).sum())
    base = {"raters": raters, "shared_items": shared}
    if raters < 2:
        return {**base, "alpha": None, "reason": f"{raters} rater(s); agreement needs at least 2"}
    if not shared:
        return {**base, "alpha": None, "reason": "no item was rated by two raters"}
    if len({score for _, _, score in ratings}) < 2:
        return {**base, "alpha": None, "reason": "every score is the same, so chance agreement is undefined"}
    alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal", value_domain=list(SCORES))
    return {**base, "alpha": float(alpha), "reason": None}


def report(sheet: str) -> dict:
    """Summary of a sheet's ratings, per criterion.

    - scores: per system, the mean of all ratings with a 95% CI from a percentile
      bootstrap over items (2000 resamples, seed 0; an item's ratings are resampled
      together, since raters of one output are not independent), and the counts;
    - win_rate: per prompt, B's mean score over raters against A's: win/tie/loss shares;
    - agreement: Krippendorff's alpha (ordinal, over items), None with a reason when undefined.
    """
    with closing(_connect()) as connection:
        system_a, system_b = _require_sheet(connection, sheet)
        rows = [
            _Rating(*row)
            for row in connection.execute(
                "SELECT r.item_id, i.system, i.prompt_index, r.rater, r.criterion, r.score FROM ratings r "
                "JOIN items i ON i.sheet = r.sheet AND i.item_id = r.item_id WHERE r.sheet = ?",
                (sheet,),
            )
        ]
        item_count = connection.execute("SELECT COUNT(*) FROM items WHERE sheet = ?", (sheet,)).fetchone()[0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    scores, win_rate, agreement = {system_a: {}, system_b: {}}, {}, {}
    for criterion in CRITERIA:
        rated = [r for r in rows if r.criterion == criterion]
        for system in (system_a, system_b):
            by_item = defaultdict(list)
            for r in rated:
                if r.system == system:
                    by_item[r.item_id].append(r.score)
            scores[system][criterion] = _mean_with_ci(by_item, rng)
        by_prompt = defaultdict(lambda: defaultdict(list))
        for r in rated:
            by_prompt[r.prompt_index][r.system].append(r.score)
        win_rate[criterion] = _win_rate(by_prompt, system_a, system_b)
        agreement[criterion] = _alpha([(r.rater, r.item_id, r.score) for r in rated])
    return {
        "sheet": sheet,
        "systems": {"A": system_a, "B": system_b},
        "items": item_count,
        "raters": sorted({r.rater for r in rows}),
        "ratings": len(rows),
        "ci": f"95% percentile bootstrap over items ({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED})",
        "scores": scores,
        "win_rate": win_rate,
        "agreement": agreement,
    }


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}"


def render_report(summary: dict) -> str:
    """The report as Markdown: a scores table, B's win rate over A, and inter-rater agreement."""
    a, b = summary["systems"]["A"], summary["systems"]["B"]
    lines = [
        f"# Human evaluation: {summary['sheet']}",
        "",
        f"A = {a}; B = {b}. {summary['items']} items, {summary['ratings']} ratings from "
        f"{len(summary['raters'])} rater(s): {', '.join(summary['raters']) or 'none yet'}. Scores are 1-5.",
        "",
        "## Scores",
        "",
        f"Mean [95% CI] (n = ratings); CI: {summary['ci']}.",
        "",
        "| system | " + " | ".join(CRITERIA) + " |",
        "|---|" + "---|" * len(CRITERIA),
    ]
    for system in (a, b):
        cells = []
        for criterion in CRITERIA:
            cell = summary["scores"][system][criterion]
            cells.append(
                "n/a (0 ratings)"
                if cell["mean"] is None
                else f"{cell['mean']:.2f} [{cell['ci_low']:.2f}, {cell['ci_high']:.2f}] (n={cell['ratings']})"
            )
        lines.append(f"| {system} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## B over A",
        "",
        "Per prompt, B's mean score over raters against A's.",
        "",
        "| criterion | win | tie | loss | prompts |",
        "|---|---|---|---|---|",
    ]
    for criterion in CRITERIA:
        cell = summary["win_rate"][criterion]
        lines.append(
            f"| {criterion} | {_percent(cell['win'])} | {_percent(cell['tie'])} | {_percent(cell['loss'])} | {cell['prompts']} |"
        )
    lines += [
        "",
        "## Inter-rater agreement",
        "",
        "Krippendorff's alpha, ordinal (1 = perfect, 0 = chance).",
        "",
        "| criterion | alpha | raters | items rated by 2+ raters |",
        "|---|---|---|---|",
    ]
    for criterion in CRITERIA:
        cell = summary["agreement"][criterion]
        alpha = f"n/a: {cell['reason']}" if cell["alpha"] is None else f"{cell['alpha']:.3f}"
        lines.append(f"| {criterion} | {alpha} | {cell['raters']} | {cell['shared_items']} |")
    return "\n".join(lines) + "\n"
