"""Blind rating sheets: both systems' outputs in a shuffled CSV with opaque item ids, the key kept apart.

The key (item -> system) goes to SQLite and `<sheet>.key.json`; the CSV (item_id, prompt, output) is what raters see.
"""

from __future__ import annotations

import csv
import io
import random
import secrets
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from tunelab.eval.human.answers import check_generation_run, check_same_prompts, generate_outputs, system_names
from tunelab.eval.human.store import HumanEvalError, connect, db_path, now, transaction
from tunelab.runs import RunDir, write_atomic, write_json


@dataclass
class SystemOutputs:
    """One system's name and its outputs, one per prompt, in prompt order."""

    name: str
    outputs: list[str]


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
    with closing(connect()) as connection:
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
    with closing(connect()) as connection, transaction(connection):
        connection.execute(
            "INSERT INTO sheets VALUES (?, ?, ?, ?, ?, ?)",
            (sheet, a.name, b.name, str(output.resolve()), seed, now()),
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
            check_generation_run(run)
    if run_b is not None:
        check_same_prompts(run_a, run_b)
    _refuse_existing(output)  # before minutes of generation, not after
    names = system_names(run_a, run_b)
    prompts, outputs_a, outputs_b = generate_outputs(run_a, run_b, n, task)
    return write_sheet(output, prompts, SystemOutputs(names[0], outputs_a), SystemOutputs(names[1], outputs_b), seed)
