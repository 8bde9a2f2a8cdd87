"""Small things a user reads: error wording, one scale for accuracy, one sign for a change."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from test_eval_suites import _result
from test_sweep import trials_of, write_config

from tunelab.data.readers import read_file
from tunelab.eval import forgetting
from tunelab.records import DataError
from tunelab.tasks import load_task
from tunelab.tasks.suite import Suite

from helpers import cli


def test_a_raw_tab_in_a_jsonl_string_is_reported_once_with_its_fix(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a\tb", "label": "positive"}\n', encoding="utf-8")
    (record,) = read_file(str(path))
    assert "at at" not in record.problem
    assert record.problem.startswith("malformed JSON: Invalid control character at column 12")
    assert record.problem.endswith("; write a tab or line break inside a string as \\t or \\n")


def test_a_json_array_with_a_raw_tab_names_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('[\n{"text": "a\tb"}\n]', encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.json:2: malformed JSON: Invalid control character at column 12;") as err:
        read_file(str(path))
    assert "at at" not in str(err.value)


def test_a_sweep_reports_validation_accuracy_on_the_0_to_100_scale(tiny_encoder, sentiment_file, tmp_path):
    space = {"training.learning_rate": {"choices": [3.0e-3]}}
    config = write_config(tmp_path, tiny_encoder, sentiment_file, space, "full", 1, metric="accuracy")
    assert cli(f"sweep {config} --trials 1 --output {tmp_path / 'sw'}") == 0
    (row,) = trials_of(tmp_path / "sw").values()
    assert 1 < row["value"] <= 100  # the tiny model beats chance on its separable data; 0-1 would be below 1


def test_the_forgetting_summary_has_the_sign_of_the_table(monkeypatch):
    gold = ["positive", "negative"] * 10
    wrong = ["negative" if label == "positive" else "positive" for label in gold]

    def answers(target, tasks, samples, seed, role, scoring):
        return {spec.name: _result(spec, gold if role == "base" else wrong, gold) for spec, _ in tasks}

    monkeypatch.setattr(forgetting, "_evaluate_all", answers)
    report = forgetting.forgetting_report(
        SimpleNamespace(name="base"),
        SimpleNamespace(name="tuned"),
        Suite(name="one", tasks=[{"task": "sst2", "limit": 4}]),
        samples=100,
    )
    assert report["average_change"] == pytest.approx(-100.0)  # tuned - base: the tuned model lost everything
    shown = forgetting.render_forgetting(report)
    assert "| -100.00 [" in shown and "**-100.00** points" in shown and "tuned - base" in shown
    assert load_task("sst2").primary_metric == "accuracy"
