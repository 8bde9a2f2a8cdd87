"""End-to-end training on tiny models: the three model families, both methods, the run directory, resume."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tunelab import pipeline, run_commands
from tunelab.config import ConfigError
from tunelab.data.encode import PackedCollator, encode, make_collator
from tunelab.data.splits import load_task_data
from tunelab.methods import apply_method
from tunelab.models.loading import check_family
from tunelab.runs import RunDir, RunError
from tunelab.train import trainer as trainer_module
from tunelab.train.trained import load_run
from tunelab.train.trainer import CompletionLossTrainer

from helpers import (
    classification_config,
    cli,
    generation_config,
    load_for_config,
    logged_losses,
    only_task,
    train_in_process,
    value,
)


def test_classification_full_writes_a_complete_run(tiny_encoder, sentiment_file, tmp_path):
    run = pipeline.train(classification_config(tiny_encoder, sentiment_file, tmp_path, epochs=8))
    assert run.state()["state"] == "complete"
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "eval.json",
        "README.md",
        "model/model.safetensors",
        "model/tokenizer.json",
    ):
        assert (run.path / name).exists(), name
    assert not run.checkpoints.exists()
    evaluation = json.loads(run.eval_path.read_text())
    task = only_task(evaluation)
    assert set(task["tuned"]["metrics"]) >= {"accuracy", "precision_macro", "recall_macro", "f1_macro"}
    assert task["base"]["examples"] == task["tuned"]["examples"]
    assert value(task["tuned"], "accuracy") > value(task["base"], "accuracy")
    assert evaluation["trainable"]["trainable_percent"] == 100.0
    losses = logged_losses(run)
    assert sum(losses[-3:]) < sum(losses[:3]) - 0.5
    assert "full" in run.card_path.read_text() and "accuracy" in run.card_path.read_text()
    assert run.state()["peak_rss_mb"] > 0 and "MB RSS" in run.card_path.read_text()
    # save -> load gives the same predictions: scoring the saved run reproduces the in-run test metrics
    test_file = tmp_path / "test.jsonl"
    data = load_task_data(run.config())
    test_file.write_text("".join(json.dumps(r.fields) + "\n" for r in data.test))
    report = json.loads(run_commands.evaluate_run(run, str(test_file)).read_text())
    scored = report["tasks"]["test.jsonl"]
    assert scored["examples"] == task["tuned"]["examples"]
    for metric in ("accuracy", "f1_macro", "precision_macro", "recall_macro"):
        interval = scored["metrics"][metric]
        assert interval["value"] == pytest.approx(value(task["tuned"], metric))
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert (run.path / "eval" / "data-test.md").exists() and (run.path / "eval" / "data-test.outputs.jsonl").exists()


def test_lora_trains_only_adapter_and_head_and_reloads_identically(tiny_encoder, sentiment_file, tmp_path):
    config = classification_config(tiny_encoder, sentiment_file, tmp_path, method="lora", epochs=2)
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, data.labels)
    model, report = apply_method(model, config)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert 0 < report.percent < 50
    run = RunDir.create(config)
    examples = encode("classification", data.train, tokenizer, config.data, data.labels).examples
    train_in_process(model, tokenizer, config, run)
    model = model.cpu()  # the Trainer moves it to the GPU when there is one; compare where `before` lives
    for name, parameter in model.named_parameters():
        if name not in trainable:
            assert torch.equal(parameter.detach(), before[name]), f"frozen weight {name} changed"
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters() if "lora_B" in n)

    run.save_model(model.save_pretrained, tokenizer)
    run.update_state(state="complete", labels=data.labels)
    reloaded = load_run(run).model
    batch = make_collator("classification", tokenizer)(examples[:8])
    batch.pop("labels")
    model.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-5)


def test_same_seed_gives_the_same_run(tiny_encoder, sentiment_file, tmp_path):
    runs = [
        pipeline.train(classification_config(tiny_encoder, sentiment_file, tmp_path / str(i), max_steps=6))
        for i in range(2)
    ]
    weights = [load_file(r.model_dir / "model.safetensors") for r in runs]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert json.loads(runs[0].eval_path.read_text())["tasks"] == json.loads(runs[1].eval_path.read_text())["tasks"]


@pytest.mark.parametrize("chunk", [1024, 3])
def test_completion_loss_equals_the_models_own_loss(tiny_decoder, copy_task_file, tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(trainer_module, "LOSS_CHUNK_LOGITS", chunk * 30522)  # chunks of `chunk` positions
    config = generation_config(tiny_decoder, copy_task_file, tmp_path)
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, None)
    examples = encode("causal_lm", data.train[:6], tokenizer, config.data).examples
    tokenizer.padding_side = "right"
    batch = make_collator("causal_lm", tokenizer)(examples)
    assert (batch["labels"] != -100).sum() < batch["attention_mask"].sum()  # the prompt is masked
    trainer = CompletionLossTrainer.__new__(CompletionLossTrainer)
    ours = trainer.compute_loss(model, dict(batch))
    theirs = model(**batch).loss
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_causal_lora_run_masks_prompt_and_learns(tiny_decoder, copy_task_file, tmp_path):
    run = pipeline.train(generation_config(tiny_decoder, copy_task_file, tmp_path, epochs=6, learning_rate=1e-2))
    losses = logged_losses(run)
    assert losses[-1] < losses[0]
    evaluation = json.loads(run.eval_path.read_text())
    assert {"rouge1", "rouge2", "rougeL", "exact_match"} <= set(only_task(evaluation)["tuned"]["metrics"])
    assert (run.model_dir / "adapter_model.safetensors").exists()
    assert 0 < evaluation["trainable"]["trainable_percent"] < 100
    # `tunelab eval RUN --data FILE` reports like a suite task: Markdown and JSON, every metric with its interval
    assert cli(f"eval {run.path} --data {copy_task_file} --output {tmp_path / 'report'} --samples 200") == 0
    report = json.loads((tmp_path / "report" / "data-copy.json").read_text())
    scored = report["tasks"]["copy.jsonl"]
    assert scored["kind"] == "generation" and scored["examples"] == 64
    assert list(scored["metrics"]) == ["rougeL", "rouge1", "rouge2", "exact_match"]
    assert all(m["low"] <= m["value"] <= m["high"] for m in scored["metrics"].values())
    table = (tmp_path / "report" / "data-copy.md").read_text()
    assert "| copy.jsonl | 64 | 0 | generate | rougeL |" in table and "score [95% CI]" in table
    assert len((tmp_path / "report" / "data-copy.outputs.jsonl").read_text().splitlines()) == 64


def test_a_compiled_decoder_run_trains_on_bucketed_rows(tiny_decoder, copy_task_file, tmp_path, monkeypatch):
    """`training.compile: true` trains through torch.compile (inductor's CPU backend here) with packed rows padded
    to multiples of 64 tokens, under the dense mask that compiles whole (per-example attention would break the
    graph at every layer)."""
    compiled, widths = [], []
    real_compile, real_collate = torch.compile, PackedCollator.__call__
    monkeypatch.setattr(
        torch, "compile", lambda model, *a, **k: compiled.append(model) or real_compile(model, *a, **k)
    )

    def collate(self, features):
        batch = real_collate(self, features)
        if self.packing.row_tokens:  # the training collator (generation's packed prefill takes whole batches)
            widths.append(batch["input_ids"].shape[1])
        return batch

    monkeypatch.setattr(PackedCollator, "__call__", collate)
    run = pipeline.train(generation_config(tiny_decoder, copy_task_file, tmp_path, epochs=2, compile=True))
    assert compiled, "the model never went through torch.compile"
    assert widths and set(widths) == {48}  # every row bucketed up to 64 tokens, capped at data.max_length
    state = json.loads((run.path / "run.json").read_text())
    assert state["state"] == "complete" and state["attention"] == "sdpa"
    losses = logged_losses(run)
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_seq2seq_trains_and_predicts_every_input(tiny_seq2seq, copy_task_file, tmp_path):
    run = pipeline.train(
        generation_config(tiny_seq2seq, copy_task_file, tmp_path, task="seq2seq", method="full", epochs=3)
    )
    losses = logged_losses(run)
    assert losses[-1] < losses[0]
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text(
        "".join(json.dumps({"question": f"repeat the word {w}"}) + "\n" for w in ("film", "dull", "cast"))
    )
    output = tmp_path / "preds.jsonl"
    assert run_commands.predict_run(run, str(inputs), str(output)) == 3
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert [r["question"] for r in rows] == ["repeat the word film", "repeat the word dull", "repeat the word cast"]
    assert all(isinstance(r["prediction"], str) for r in rows)


class InterruptAfterFirstSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        raise KeyboardInterrupt


def test_interrupted_run_is_not_complete_and_resumes(tiny_encoder, sentiment_file, tmp_path, monkeypatch):
    config = classification_config(tiny_encoder, sentiment_file, tmp_path, epochs=2)
    original = pipeline.build_trainer

    def interrupting_trainer(*args, **kwargs):
        trainer = original(*args, **kwargs)
        trainer.add_callback(InterruptAfterFirstSave())
        return trainer

    monkeypatch.setattr(pipeline, "build_trainer", interrupting_trainer)
    with pytest.raises(KeyboardInterrupt):
        pipeline.train(config)
    run = RunDir(next(tmp_path.glob("tiny-cls-*")))
    assert run.state()["state"] == "interrupted"
    assert not run.eval_path.exists() and not run.model_dir.exists()
    with pytest.raises(RunError, match="--resume"):
        run_commands.evaluate_run(run, str(sentiment_file))
    steps_done = int(run.last_checkpoint().name.split("-")[-1])

    monkeypatch.setattr(pipeline, "build_trainer", original)
    pipeline.train(run.config(), resume=run)
    assert run.state()["state"] == "complete"
    logged = [json.loads(line) for line in run.metrics_path.read_text().splitlines()]
    loss_steps = [entry["step"] for entry in logged if "loss" in entry]
    assert loss_steps == sorted(set(loss_steps))  # every step once: continued from the checkpoint, not from zero
    assert (
        steps_done < max(e["step"] for e in logged) == run.state()["steps"] == 19
    )  # 2 epochs of 76 examples, batch 8


def test_model_family_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder model"):
        check_family("minilm-l6", "causal_lm")
