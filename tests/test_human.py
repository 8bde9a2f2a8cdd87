"""Human evaluation: blind sheets from a tiny run, ratings that survive a killed session, CSV import, the report."""

from __future__ import annotations

import csv
import json
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import krippendorff
import numpy as np
import pytest

from tunelab.config import build_config
from tunelab.data.splits import load_task_data
from tunelab.eval import human
from tunelab.eval.human import HumanEvalError, SystemOutputs
from tunelab.eval.predict import generate
from tunelab.kinds.generation import render_prompt
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.runs import RunDir
from tunelab.train.trained import load_run

from helpers import CONFIG_DEFAULT, generation_config

HUMAN = {
    "name": "tiny-human",
    "evaluation": {"baselines": []},
    "epochs": CONFIG_DEFAULT,
    "max_steps": 4,
    "learning_rate": 1e-2,
}
"""The human-rating tests' tiny generator: four steps at a high rate, no baseline scoring."""


def read_sheet(path: Path) -> list[dict]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def make_sheet(tmp_path: Path, name: str, prompts: int = 3) -> dict:
    """A sheet from hand-made outputs (no model needed); returns its key."""
    texts = [f"question {i}" for i in range(prompts)]
    human.write_sheet(
        tmp_path / f"{name}.csv",
        texts,
        SystemOutputs("sys-a", [f"a says {i}" for i in range(prompts)]),
        SystemOutputs("sys-b", [f"b says {i}" for i in range(prompts)]),
    )
    return json.loads((tmp_path / f"{name}.key.json").read_text())


def item_of(key: dict, system: str, prompt_index: int) -> str:
    return next(i for i, v in key["items"].items() if v == {"system": system, "prompt_index": prompt_index})


def db_rows(query: str, *params) -> list[tuple]:
    with sqlite3.connect(human.db_path()) as connection:
        return connection.execute(query, params).fetchall()


def write_ratings(path: Path, rows: list[list]) -> Path:
    lines = ["sheet,item_id,rater,fluency,coherence,relevance"] + [",".join(map(str, row)) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --- export ----------------------------------------------------------------------------------------------------


def test_export_writes_a_blind_sheet_whose_key_maps_back(decoder_run, tiny_decoder, tmp_path):
    run = decoder_run("lora")
    output = tmp_path / "sheets" / "copy-sheet.csv"
    assert human.export_sheet(run, None, 3, output, seed=1) == output

    rows = read_sheet(output)
    assert list(rows[0]) == ["item_id", "prompt", "output"] and len(rows) == 6
    config = run.config()
    records = load_task_data(config).test[:3]
    prompts = [render_prompt(r.fields, config.data) for r in records]
    assert sorted(r["prompt"] for r in rows) == sorted(prompts * 2)
    assert all(re.fullmatch(r"[0-9a-f]{8}", r["item_id"]) for r in rows) and len({r["item_id"] for r in rows}) == 6
    key = json.loads((output.parent / "copy-sheet.key.json").read_text())
    base, tuned = key["systems"]["A"], key["systems"]["B"]
    assert base.startswith("base ") and tuned == f"tuned {run.path.name}"
    text = output.read_text(encoding="utf-8")
    assert base not in text and tuned not in text and run.path.name not in text

    # the key says who wrote each output: regenerate with each system and compare
    loaded = load_run(run)
    expected = {
        tuned: generate(loaded.model, loaded.tokenizer, records, config),
        base: generate(load_base(config), load_tokenizer(tiny_decoder), records, config),
    }
    assert expected[tuned] != expected[base]  # otherwise the check below could not tell the systems apart
    for row in rows:
        entry = key["items"][row["item_id"]]
        assert row["prompt"] == prompts[entry["prompt_index"]]
        assert row["output"] == expected[entry["system"]][entry["prompt_index"]]
    written = [(key["items"][r["item_id"]]["system"], key["items"][r["item_id"]]["prompt_index"]) for r in rows]
    assert sorted(written) == sorted((s, i) for s in (base, tuned) for i in range(3))
    assert written != [(s, i) for i in range(3) for s in (base, tuned)]  # shuffled, not in system order
    stored = db_rows(
        "SELECT item_id, system, prompt_index, prompt, output FROM items WHERE sheet = ? ORDER BY position",
        "copy-sheet",
    )
    assert [(r[0], r[3], r[4]) for r in stored] == [(r["item_id"], r["prompt"], r["output"]) for r in rows]
    assert all(key["items"][r[0]] == {"system": r[1], "prompt_index": r[2]} for r in stored)

    with pytest.raises(HumanEvalError, match="already exists"):
        human.export_sheet(run, None, 3, output)
    with pytest.raises(HumanEvalError, match="already in"):
        human.export_sheet(run, None, 3, tmp_path / "elsewhere" / "copy-sheet.csv")
    with pytest.raises(HumanEvalError, match="has 6 test records"):
        human.export_sheet(run, None, 7, tmp_path / "too-many.csv")


def fake_complete_run(config) -> RunDir:
    run = RunDir.create(config)
    run.update_state(state="complete")
    return run


def test_export_refuses_classifiers_and_runs_with_different_prompts(
    tiny_encoder, tiny_decoder, sentiment_file, copy_task_file, tmp_path
):
    classifier = build_config(
        {
            "name": "cls",
            "task": "classification",
            "output_dir": str(tmp_path),
            "model": {"name": tiny_encoder},
            "data": {"train": str(sentiment_file)},
        }
    )
    with pytest.raises(HumanEvalError, match="human rating is for generated text"):
        human.export_sheet(fake_complete_run(classifier), None, 3, tmp_path / "cls.csv")
    one = fake_complete_run(generation_config(tiny_decoder, copy_task_file, tmp_path / "one", **HUMAN))
    other = fake_complete_run(
        generation_config(
            tiny_decoder, copy_task_file, tmp_path / "two", data={"prompt_template": "Q: {question}"}, **HUMAN
        )
    )
    with pytest.raises(HumanEvalError, match=r"data.prompt_template: '\{question\}' vs 'Q: \{question\}'"):
        human.export_sheet(one, other, 3, tmp_path / "pair.csv")
    with pytest.raises(HumanEvalError, match="both systems are run"):
        human.export_sheet(one, one, 3, tmp_path / "pair.csv")


# --- interactive rating ----------------------------------------------------------------------------------------


def scripted(answers: list[str]):
    """An `input` replacement that answers from a list, and the prompts and messages it saw."""
    seen: list[str] = []
    pending = list(answers)

    def answer(prompt: str) -> str:
        seen.append(prompt)
        if not pending:
            raise EOFError
        return pending.pop(0)

    return answer, seen


def test_ratings_survive_a_killed_session_and_resume_at_the_next_item(tmp_path):
    make_sheet(tmp_path, "killed")
    order = [item for (item,) in db_rows("SELECT item_id FROM items WHERE sheet = 'killed' ORDER BY position")]
    session = subprocess.Popen(
        [sys.executable, "-c", "from tunelab.eval.human import rate_interactive; rate_interactive('killed', 'ann')"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        session.stdin.write("4\n5\n3\n2\n")  # the first item's three scores, and the second item's fluency
        session.stdin.flush()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and session.poll() is None:
            if human.db_path().exists() and len(db_rows("SELECT 1 FROM ratings WHERE sheet = 'killed'")) == 4:
                break
            time.sleep(0.1)
        assert session.poll() is None, session.stderr.read()
    finally:
        session.kill()
        session.wait()
    stored = db_rows("SELECT item_id, criterion, score FROM ratings WHERE sheet = 'killed' AND rater = 'ann'")
    assert sorted(stored) == sorted(
        [(order[0], "fluency", 4), (order[0], "coherence", 5), (order[0], "relevance", 3), (order[1], "fluency", 2)]
    )

    answer, prompts = scripted(["q"])
    messages: list[str] = []
    assert human.rate_interactive("killed", "ann", input=answer, output=messages.append) == 0
    assert "1 of 6 items rated, 5 to go" in messages[0]
    assert f"item {order[1]}" in messages[1] and " says " in messages[1]
    assert prompts == ["  coherence (1-5, q to quit): "]  # the second item's fluency is kept, not asked again
    assert "1 of 6 items fully rated, 5 remain" in messages[-1]


def test_bad_answers_are_asked_again_and_rerating_replaces(tmp_path):
    make_sheet(tmp_path, "retry", prompts=1)
    answer, _ = scripted(["7", "good", "3", "4", "5", "1", "1", "1"])
    messages: list[str] = []
    assert human.rate_interactive("retry", "bob", input=answer, output=messages.append) == 2
    assert sum("type a whole number from 1 to 5 for fluency" in m for m in messages) == 2
    assert "all 2 items" in messages[-1]
    assert sorted(score for (score,) in db_rows("SELECT score FROM ratings WHERE rater = 'bob'")) == [1, 1, 1, 3, 4, 5]
    answer, prompts = scripted([])
    assert human.rate_interactive("retry", "bob", input=answer, output=messages.append) == 0 and prompts == []
    with pytest.raises(HumanEvalError, match="unknown sheet 'nope'.*known sheets: .*retry"):
        human.rate_interactive("nope", "bob", input=answer, output=messages.append)


# --- import ----------------------------------------------------------------------------------------------------


def test_import_csv_stores_good_rows_and_nothing_from_a_file_with_a_bad_row(tmp_path):
    key = make_sheet(tmp_path, "imported")
    first, second = item_of(key, "sys-a", 0), item_of(key, "sys-b", 0)
    good = write_ratings(
        tmp_path / "good.csv",
        [
            ["imported", first, "ann", 4, 5, 3],
            ["imported", second, "ann", 2, 2, 1],
            ["imported", first, "bob", 5, 5, 5],
        ],
    )
    assert human.import_csv(good) == 3
    assert len(db_rows("SELECT 1 FROM ratings WHERE sheet = 'imported'")) == 9
    assert db_rows(
        "SELECT score FROM ratings WHERE item_id = ? AND rater = 'ann' AND criterion = 'coherence'", first
    ) == [(5,)]

    bad = write_ratings(
        tmp_path / "bad.csv", [["imported", second, "carl", 3, 3, 3], ["imported", first, "carl", 7, 3, 3]]
    )
    with pytest.raises(HumanEvalError, match=r"bad\.csv, line 3, column fluency: score '7'"):
        human.import_csv(bad)
    assert db_rows("SELECT 1 FROM ratings WHERE rater = 'carl'") == []

    unknown = write_ratings(tmp_path / "unknown.csv", [["imported", "deadbeef", "carl", 3, 3, 3]])
    with pytest.raises(HumanEvalError, match="line 2, column item_id: sheet 'imported' has no item 'deadbeef'"):
        human.import_csv(unknown)
    missing = tmp_path / "missing.csv"
    missing.write_text(f"sheet,item_id,rater,fluency,coherence\nimported,{first},carl,3,3\n", encoding="utf-8")
    with pytest.raises(HumanEvalError, match="line 1: missing column\\(s\\) relevance"):
        human.import_csv(missing)

    again = write_ratings(tmp_path / "again.csv", [["imported", first, "ann", 1, 1, 1]])
    assert human.import_csv(again) == 1  # re-rating replaces
    assert db_rows("SELECT score FROM ratings WHERE item_id = ? AND rater = 'ann' ORDER BY criterion", first) == [
        (1,),
        (1,),
        (1,),
    ]


# --- report ----------------------------------------------------------------------------------------------------

# scores[rater][criterion] = (A on prompt 0, B on prompt 0, A on prompt 1, B on prompt 1)
SCORES = {
    "ann": {"fluency": (2, 4, 3, 3), "coherence": (1, 5, 4, 2), "relevance": (4, 4, 4, 4)},
    "bob": {"fluency": (2, 4, 3, 3), "coherence": (2, 4, 5, 1), "relevance": (4, 4, 4, 4)},
}


def test_report_means_win_rate_and_agreement_match_hand_computation(tmp_path):
    key = make_sheet(tmp_path, "reported", prompts=2)
    items = [item_of(key, system, index) for index in (0, 1) for system in ("sys-a", "sys-b")]
    rows = [
        ["reported", item, rater, *(SCORES[rater][c][position] for c in ("fluency", "coherence", "relevance"))]
        for rater in SCORES
        for position, item in enumerate(items)
    ]
    human.import_csv(write_ratings(tmp_path / "ratings.csv", rows))

    summary = human.report("reported")
    assert summary["systems"] == {"A": "sys-a", "B": "sys-b"} and summary["raters"] == ["ann", "bob"]
    fluency_a, fluency_b = summary["scores"]["sys-a"]["fluency"], summary["scores"]["sys-b"]["fluency"]
    assert fluency_a["mean"] == pytest.approx((2 + 3 + 2 + 3) / 4) and fluency_b["mean"] == pytest.approx(
        (4 + 3 + 4 + 3) / 4
    )
    assert fluency_a["ratings"] == 4 and fluency_a["items"] == 2
    assert summary["scores"]["sys-a"]["coherence"]["mean"] == pytest.approx((1 + 4 + 2 + 5) / 4)
    assert summary["scores"]["sys-b"]["coherence"]["mean"] == pytest.approx((5 + 2 + 4 + 1) / 4)
    for system in ("sys-a", "sys-b"):
        for cell in summary["scores"][system].values():
            assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert summary["scores"]["sys-a"]["relevance"]["ci_low"] == summary["scores"]["sys-a"]["relevance"]["ci_high"] == 4

    # fluency: prompt 0 B 4 > A 2, prompt 1 3 = 3; coherence: prompt 0 B 4.5 > A 1.5, prompt 1 B 1.5 < A 4.5
    assert summary["win_rate"]["fluency"] == {"win": 0.5, "tie": 0.5, "loss": 0.0, "prompts": 2}
    assert summary["win_rate"]["coherence"] == {"win": 0.5, "tie": 0.0, "loss": 0.5, "prompts": 2}
    assert summary["win_rate"]["relevance"] == {"win": 0.0, "tie": 1.0, "loss": 0.0, "prompts": 2}

    for criterion, expected in (("fluency", 1.0), ("coherence", None)):
        matrix = np.array([SCORES[rater][criterion] for rater in ("ann", "bob")], dtype=float)
        alpha = krippendorff.alpha(reliability_data=matrix, level_of_measurement="ordinal")
        assert summary["agreement"][criterion]["alpha"] == pytest.approx(alpha)
        if expected is not None:
            assert alpha == pytest.approx(expected)
    assert summary["agreement"]["relevance"]["alpha"] is None
    assert "same" in summary["agreement"]["relevance"]["reason"]
    assert human.report("reported") == summary  # the bootstrap is seeded

    markdown = human.render_report(summary)
    assert "| sys-a | 2.50 [" in markdown and "| fluency | 50% | 50% | 0% | 2 |" in markdown
    assert "| fluency | 1.000 | 2 | 4 |" in markdown and "n/a: every score is the same" in markdown


def test_agreement_needs_two_raters(tmp_path):
    key = make_sheet(tmp_path, "alone", prompts=1)
    human.import_csv(write_ratings(tmp_path / "alone.csv", [["alone", item, "ann", 3, 4, 5] for item in key["items"]]))
    summary = human.report("alone")
    assert summary["agreement"]["fluency"] == {
        "raters": 1,
        "shared_items": 0,
        "alpha": None,
        "reason": "1 rater(s); agreement needs at least 2",
    }
    assert "n/a: 1 rater(s)" in human.render_report(summary)


# --- rating in pairs (the web app) -----------------------------------------------------------------------------


def test_pairs_come_in_sheet_order_with_both_outputs_and_resume_per_rater(tmp_path):
    key = make_sheet(tmp_path, "pairs")
    positions = dict(db_rows("SELECT item_id, position FROM items WHERE sheet = 'pairs'"))
    first = human.next_pair("pairs", "ann")
    assert (first.number, first.total) == (1, 3)
    assert first.item_ids[0] == min(positions, key=positions.get)  # the shuffled sheet's first item leads
    assert sorted(positions[i] for i in first.item_ids) == [positions[i] for i in first.item_ids]
    assert {key["items"][i]["system"] for i in first.item_ids} == {"sys-a", "sys-b"}
    assert len({key["items"][i]["prompt_index"] for i in first.item_ids}) == 1
    assert all(f"says {key['items'][first.item_ids[0]]['prompt_index']}" in o for o in first.outputs)

    scores = {item: {"fluency": 5, "coherence": 4, "relevance": 3} for item in first.item_ids}
    human.save_pair("pairs", "ann", scores)
    assert human.next_pair("pairs", "ann").number == 2
    assert human.next_pair("pairs", "bob").number == 1  # each rater has their own place
    stored = db_rows("SELECT item_id, criterion, score FROM ratings WHERE sheet = 'pairs' AND rater = 'ann'")
    assert sorted(stored) == sorted((i, c, scores[i][c]) for i in first.item_ids for c in human.CRITERIA)
    progress = {s["name"]: s for s in human.sheet_progress()}["pairs"]
    assert progress["items"] == 6 and progress["rated"] == {"ann": 2}


def test_a_pair_with_a_missing_or_bad_score_stores_nothing(tmp_path):
    make_sheet(tmp_path, "partial", prompts=2)
    pair = human.next_pair("partial", "ann")
    full = {"fluency": 4, "coherence": 4, "relevance": 4}
    with pytest.raises(human.HumanEvalError, match=r"relevance needs a whole score from 1 to 5, got None"):
        human.save_pair("partial", "ann", {pair.item_ids[0]: full, pair.item_ids[1]: {"fluency": 2, "coherence": 2}})
    with pytest.raises(human.HumanEvalError, match="from 1 to 5, got 6"):
        human.save_pair("partial", "ann", {i: {**full, "fluency": 6} for i in pair.item_ids})
    with pytest.raises(human.HumanEvalError, match=f"item {pair.item_ids[1]}: fluency needs a whole score"):
        human.save_pair("partial", "ann", {pair.item_ids[0]: full})
    other = next(i for (i,) in db_rows("SELECT item_id FROM items WHERE sheet = 'partial'") if i not in pair.item_ids)
    with pytest.raises(human.HumanEvalError, match="rate the outputs of one prompt together"):
        human.save_pair("partial", "ann", {**{i: full for i in pair.item_ids}, other: full})
    with pytest.raises(human.HumanEvalError, match="not in sheet 'partial'"):
        human.save_pair("partial", "ann", {"nope": full})
    with pytest.raises(human.HumanEvalError, match="give a rater name"):
        human.save_pair("partial", " ", {i: full for i in pair.item_ids})
    assert db_rows("SELECT COUNT(*) FROM ratings WHERE sheet = 'partial'") == [(0,)]


def test_two_raters_saving_at_once_both_land(tmp_path):
    make_sheet(tmp_path, "together", prompts=4)
    errors: list[BaseException] = []

    def rate_all(rater: str, score: int) -> None:
        try:
            while (pair := human.next_pair("together", rater)) is not None:
                human.save_pair("together", rater, {i: dict.fromkeys(human.CRITERIA, score) for i in pair.item_ids})
        except BaseException as error:  # reported below: a thread's exception would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=rate_all, args=(rater, score)) for rater, score in (("ann", 2), ("bob", 5))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    counts = dict(db_rows("SELECT rater, COUNT(*) FROM ratings WHERE sheet = 'together' GROUP BY rater"))
    assert counts == {"ann": 24, "bob": 24}
    assert db_rows("SELECT DISTINCT score FROM ratings WHERE sheet = 'together' AND rater = 'bob'") == [(5,)]
