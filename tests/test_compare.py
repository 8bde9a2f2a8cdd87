"""`tunelab compare` on a tiny encoder: one row per method, failures as rows, the files a user reads."""

from __future__ import annotations

import json

import pytest
import yaml

from tunelab.cli import main
from tunelab.compare import parse_learning_rates, parse_sizes
from tunelab.config import ConfigError

from helpers import cli, tiny_run_settings, write_yaml


def _tiny_classifier_config(tmp_path, tiny_encoder, sentiment_file, name: str, **training) -> str:
    """A classification config on the tiny encoder, written to tmp_path/<name>.yaml; `training` overrides."""
    settings = tiny_run_settings(
        "classification", tiny_encoder, sentiment_file, name=name, **{"epochs": 1, "batch_size": 4, **training}
    )
    return str(write_yaml(tmp_path / f"{name}.yaml", settings))


def test_compare_writes_a_row_per_method_and_survives_failing_ones(tiny_encoder, sentiment_file, tmp_path, capsys):
    config = _tiny_classifier_config(
        tmp_path, tiny_encoder, sentiment_file, "tiny", max_steps=3, batch_size=8, learning_rate=1.0
    )
    code = cli(
        f"compare {config} --methods full,head,lora,qlora,nonsense --learning-rates lora=3e-3 --output-dir {tmp_path / 'cmp'}"
    )
    assert code == 0
    out = tmp_path / "cmp" / "tiny"
    summary = json.loads((out / "summary.json").read_text())
    rows = {row["variant"]: row for row in summary["variants"]}
    assert list(rows) == ["full", "head", "lora", "qlora", "nonsense"]
    assert [rows[m]["status"] for m in rows] == ["ok", "ok", "ok", "failed", "failed"]
    assert "CUDA" in rows["qlora"]["error"] and "'nonsense'" in rows["nonsense"]["error"]
    assert (
        rows["head"]["trainable_percent"]
        < rows["lora"]["trainable_percent"]
        < rows["full"]["trainable_percent"]
        == 100
    )
    assert (
        rows["lora"]["learning_rate"] == 3e-3 and rows["full"]["learning_rate"] == 5e-5
    )  # config's 1.0 is not shared
    assert rows["head"]["saved_mb"] < rows["full"]["saved_mb"]
    assert all(rows[m]["peak_rss_mb"] > 0 and rows[m]["seconds_per_epoch"] > 0 for m in ("full", "head", "lora"))
    (task,) = summary["tasks"]
    assert summary["base"][task] is not None and summary["base_score"] == summary["base"][task]
    assert rows["full"]["tuned"][task]["examples"] == 10 and rows["full"]["score"] == rows["full"]["scores"][task]
    table = (out / "summary.md").read_text()
    assert all(f"| {m} |" in table for m in rows) and "## Failed variants" in table and f"{task} (accuracy)" in table
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["compare", str(config), "--methods", "head", "--output-dir", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "tiny-2" / "summary.json").exists()  # the first comparison is kept
    assert (out / "summary.json").read_text() == json.dumps(summary, indent=2, ensure_ascii=False) + "\n"


def test_compare_sizes_draws_a_learning_curve_from_nested_training_sets(
    tiny_encoder, sentiment_file, tmp_path, capsys
):
    config = _tiny_classifier_config(tmp_path, tiny_encoder, sentiment_file, "curve", learning_rate=5e-2)
    assert cli(f"compare {config} --sizes 0,4,64 --output-dir {tmp_path / 'cmp'}") == 0
    out = tmp_path / "cmp" / "curve"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "size"
    small, large = summary["variants"]
    assert (small["variant"], small["train_examples"], large["variant"], large["train_examples"]) == (
        "n4",
        4,
        "n64",
        64,
    )
    assert (small["steps"], large["steps"]) == (1, 16)  # one epoch of batch 4: each trained on its size alone
    assert small["base_score"] is not None and large["base_score"] is None  # size 0 is scored once
    assert summary["base_score"] == small["base_score"]
    table = (out / "summary.md").read_text()
    assert "| train examples |" in table and "vs previous size" in table
    base_row = next(line for line in table.splitlines() if line.startswith("| 0 (base model) |"))
    assert f"{summary['base_score']:.2f}" in base_row
    assert "method lora" in table
    large_row = next(line for line in table.splitlines() if line.startswith("| 64 |")).split(" | ")
    assert large["score"] != small["score"]  # so the next line tells the two differences apart
    assert f"{large['score'] - small['score']:+.2f}" == large_row[3]  # vs previous size: n64 minus n4
    assert f"{large['score'] - summary['base_score']:+.2f}" == large_row[2]
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_sizes_without_zero_scores_no_base(tiny_encoder, sentiment_file, tmp_path):
    config = _tiny_classifier_config(tmp_path, tiny_encoder, sentiment_file, "curve", max_steps=1)
    assert cli(f"compare {config} --sizes 8 --output-dir {tmp_path / 'cmp'}") == 0
    summary = json.loads((tmp_path / "cmp" / "curve" / "summary.json").read_text())
    assert summary["base_score"] is None and summary["variants"][0]["status"] == "ok"


def test_compare_sizes_refuses_more_examples_than_the_training_data_has(
    tiny_encoder, sentiment_file, tmp_path, capsys
):
    config = _tiny_classifier_config(tmp_path, tiny_encoder, sentiment_file, "curve")
    assert cli(f"compare {config} --sizes 0,8,500 --output-dir {tmp_path / 'cmp'}") == 2
    error = capsys.readouterr().err
    assert "--sizes asks for 500 training examples" in error and str(sentiment_file) in error
    assert not (tmp_path / "cmp").exists()  # refused before anything trained


@pytest.mark.parametrize("text", ["", "100,50", "0,100,100", "-5", "1e3"])
def test_sizes_option_rejects_what_is_not_an_increasing_list_of_counts(text):
    with pytest.raises(ConfigError, match="--sizes"):
        parse_sizes(text)


def test_sizes_option_parses():
    assert parse_sizes("0, 100,250") == [0, 100, 250]


@pytest.mark.parametrize("text,expected", [("", {}), ("full=3e-5, lora=1e-3", {"full": 3e-5, "lora": 1e-3})])
def test_learning_rate_option_parses(text, expected):
    assert parse_learning_rates(text) == expected


def test_learning_rate_option_names_the_bad_item():
    with pytest.raises(ConfigError, match="'lora:1e-3' is not METHOD=RATE"):
        parse_learning_rates("full=3e-5,lora:1e-3")


def test_predict_rejects_two_adapters_with_one_name(tmp_path, capsys):
    code = cli(
        f"predict --adapter {tmp_path / 'a' / 'run'} --adapter {tmp_path / 'b' / 'run'} --input x.jsonl --output y.jsonl"
    )
    assert code == 2 and "NAME=RUN_DIR" in capsys.readouterr().err


def test_compare_reports_each_methods_forgetting_when_a_retention_suite_is_set(tiny_decoder, copy_task_file, tmp_path):
    config = tmp_path / "gen.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "name": "gen",
                "task": "causal_lm",
                "model": {"name": tiny_decoder},
                "data": {
                    "train": str(copy_task_file),
                    "prompt_template": "{question}",
                    "response_field": "answer",
                    "max_length": 48,
                },
                "training": {"max_steps": 2, "batch_size": 8, "precision": "fp32"},
                "eval": {"max_new_tokens": 4, "retention_suite": "glue-mini", "retention_limit": 2},
            }
        )
    )
    assert main(["compare", str(config), "--methods", "lora,full", "--output-dir", str(tmp_path / "cmp")]) == 0
    out = tmp_path / "cmp" / "gen"
    rows = {row["variant"]: row for row in json.loads((out / "summary.json").read_text())["variants"]}
    for method in ("lora", "full"):
        report = json.loads(
            (next((out / "runs" / method).glob("*")) / "eval" / "forgetting-glue-mini.json").read_text()
        )
        assert rows[method]["retention_change"] == report["average_change"]
    assert "retention change (glue-mini, tuned - base)" in (out / "summary.md").read_text()
