"""`tunelab eval --data` as a user drives it: --limit and --batch-size take effect, generation shows its progress,
two data files of one name keep their own reports, and a run's end-of-training scores are the scores `tunelab eval`
gives on the same file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from tunelab import pipeline, run_commands
from tunelab.data.splits import load_task_data
from tunelab.data.taskset import task_specs
from tunelab.eval import gain, generate
from tunelab.eval.runner import run_task
from tunelab.eval.targets import load_target

from helpers import cli, copy_rows, generation_config, lm_config, texts, write_jsonl


def _test_file(run, path):
    """The run's own test split, written as a data file `tunelab eval --data` reads."""
    records = load_task_data(run.config()).test
    path.write_text("".join(json.dumps(r.fields) + "\n" for r in records))
    return path


def test_end_of_training_scores_are_the_scores_eval_gives(tiny_decoder, tmp_path, monkeypatch):
    """A bf16 run (frozen base stored in bf16, training under autocast) is scored at the end as `tunelab eval`
    scores it, reloaded in fp32 (and, on a GPU, with the TF32 matmuls the Trainer turned on turned off again), so
    the card and eval agree to the last digit; the base is scored in fp32 too, and each figure says its precision."""
    seen = []

    def score_tasks(target, *args, **kwargs):
        seen.append(torch.backends.fp32_precision)
        return gain.score_tasks(target, *args, **kwargs)

    class TurnsOnTf32(TrainerCallback):  # what TrainingArguments(tf32=True) does on a GPU
        def on_train_end(self, *args, **kwargs):
            torch.backends.fp32_precision = "tf32"

    monkeypatch.setattr(torch.backends, "fp32_precision", torch.backends.fp32_precision)  # restored afterwards
    monkeypatch.setattr(pipeline, "is_torch_tf32_available", lambda: True)
    monkeypatch.setattr(pipeline, "score_tasks", score_tasks)
    text_file = write_jsonl(tmp_path / "domain.jsonl", [{"body": text} for text in texts(120)])
    config = lm_config(tiny_decoder, text_file, tmp_path, method="lora", max_steps=4, precision="bf16")
    run = pipeline.train(config, callbacks=[TurnsOnTf32()])
    assert seen[-1] == "ieee"  # the tuned model's scoring, after training
    task = next(iter(json.loads(run.eval_path.read_text())["tasks"].values()))
    report_path = run_commands.evaluate_run(run, str(_test_file(run, tmp_path / "test.jsonl")))
    scored = json.loads(report_path.read_text())["tasks"]["test.jsonl"]
    assert task["base"]["precision"] == task["tuned"]["precision"] == scored["precision"] == "fp32"
    assert "weights in fp32" in run.card_path.read_text()
    assert "Weights in fp32." in Path(report_path).with_suffix(".md").read_text()
    for metric, interval in scored["metrics"].items():
        assert interval["value"] == task["tuned"]["metrics"][metric]["value"], metric
    spec = task_specs(config).pick(None)
    base = run_task(load_target(tiny_decoder), spec, load_task_data(config).test, seed=config.training.seed)
    assert base.as_dict()["metrics"] == task["base"]["metrics"]


@pytest.fixture(scope="module")
def generating_run(tiny_decoder, tmp_path_factory):
    """A tiny LoRA decoder run that answers by generating (two training steps: what it answers does not matter)."""
    folder = tmp_path_factory.mktemp("generating-run")
    train = write_jsonl(folder / "train.jsonl", copy_rows(["good", "bad", "film", "plot"] * 8))
    return pipeline.train(generation_config(tiny_decoder, train, folder, max_steps=2))


def test_eval_data_honours_limit_and_batch_size_and_shows_progress(generating_run, tmp_path, monkeypatch, capsys):
    data = write_jsonl(tmp_path / "test.jsonl", copy_rows(["good", "bad", "film", "plot", "cast", "scene"] * 2))
    batches = []
    generate_rows = generate.generate_rows

    def counted(model, tokenizer, rows, **options):
        batches.append(len(rows))
        return generate_rows(model, tokenizer, rows, **options)

    monkeypatch.setattr(generate, "generate_rows", counted)
    assert cli(f"eval {generating_run.path} --data {data} --limit 5 --batch-size 2 --output {tmp_path / 'out'}") == 0
    report = json.loads((tmp_path / "out" / "data-test.json").read_text())
    assert report["tasks"]["test.jsonl"]["examples"] == 5
    assert batches == [2, 2, 1]
    outputs = (tmp_path / "out" / "data-test.outputs.jsonl").read_text().splitlines()
    assert len(outputs) == 5
    progress = [line for line in capsys.readouterr().err.split("\n") if "generating" in line]
    assert progress and "5/5" in progress[-1]  # stderr is no terminal here: whole lines, one at the end
    assert not any("\r" in line for line in progress)


def test_two_data_files_of_one_name_keep_their_own_reports(generating_run, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
    first = write_jsonl(tmp_path / "a" / "test.jsonl", copy_rows(["good", "bad"]))
    second = write_jsonl(tmp_path / "b" / "test.jsonl", copy_rows(["film", "plot", "cast"]))
    out = tmp_path / "out"
    reports = [Path(run_commands.evaluate_run(generating_run, str(f), out)) for f in (first, second, first, second)]
    assert reports[0].name == "data-test.json" and reports[1].name.startswith("data-test-")
    assert reports[2:] == reports[:2]  # each file keeps its report's name
    for report, data in zip(reports, (first, second)):
        scored = json.loads(report.read_text())
        assert scored["data"] == str(data.resolve())
        assert scored["tasks"]["test.jsonl"]["examples"] == len(data.read_text().splitlines())
    assert sorted(p.name for p in out.glob("*.json")) == sorted(r.name for r in reports[:2])
