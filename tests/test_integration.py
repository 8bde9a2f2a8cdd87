"""Integration: the real offline models on slices of ../shared/data (tens of seconds each on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from tunelab import pipeline
from tunelab.config import load_config
from tunelab.data.encode import encode, make_collator
from tunelab.data.splits import load_task_data
from tunelab.methods import apply_method
from tunelab.models.loading import load_model, prepare
from tunelab.models.registry import REGISTRY, is_prepared
from tunelab.train.trainer import CompletionLossTrainer

from helpers import SHARED_DATA, load_for_config, only_task, value

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SHARED_DATA.exists(), reason=f"{SHARED_DATA} (the shared datasets) is not beside the checkout"
    ),
]
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_minilm_lora_on_sst2_beats_the_untrained_head(tmp_path):
    sst2 = SHARED_DATA / "sst2"
    config = load_config(
        CONFIGS / "sentiment-minilm-lora.yaml",
        [
            f"data.train={sst2 / 'train.jsonl'}",
            f"data.validation={sst2 / 'validation.jsonl'}",
            f"data.test={sst2 / 'test.jsonl'}",
            "data.max_train_examples=400",
            "data.max_eval_examples=300",
            "training.epochs=2",
            f"output_dir={tmp_path}",
        ],
    )
    run = pipeline.train(config)
    evaluation = json.loads(run.eval_path.read_text())
    task = only_task(evaluation)
    assert task["tuned"]["examples"] == 300
    assert value(task["tuned"], "accuracy") > value(task["base"], "accuracy") + 10
    assert value(task["tuned"], "accuracy") > 62
    assert evaluation["trainable"]["trainable_percent"] < 1.0


def test_smollm2_lora_lowers_the_loss_and_reloads_with_the_same_outputs(tmp_path):
    config = load_config(
        CONFIGS / "dialogsum-smollm2-lora.yaml",
        [
            f"data.train={SHARED_DATA / 'dialogsum' / 'validation.jsonl'}",
            f"data.test={SHARED_DATA / 'dialogsum' / 'test.jsonl'}",
            "data.max_length=192",
            "data.max_target_length=48",
            "data.max_train_examples=4",
            "method.lora.target_modules=attention",
            "training.precision=fp32",
        ],
    )
    source = str(prepare("smollm2-135m-instruct"))
    assert is_prepared(REGISTRY["smollm2-135m-instruct"])
    data = load_task_data(config)
    model, tokenizer = load_for_config(config, None)
    assert tokenizer.chat_template, "the prepared SmolLM2 keeps its chat template"
    model, _ = apply_method(model, config)
    tokenizer.padding_side = "right"
    batch = make_collator("generation", "decoder", tokenizer)(
        encode("generation", "decoder", data.train[:2], tokenizer, config.data).examples
    )
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss_of = CompletionLossTrainer.__new__(CompletionLossTrainer).compute_loss
    losses = []
    model.train()
    for _ in range(4):
        loss = loss_of(model, dict(batch))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses

    model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(load_model(source, "decoder"), tmp_path / "adapter")
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-4)


def test_smollm2_continued_pretraining_on_dialogues_then_summarising_from_that_run(tmp_path):
    """The two-stage recipe's configs on a few dialogues: stage 1 lowers the held-out dialogues' perplexity, and
    stage 2 starts from stage 1's merged weights, its card naming the chain."""
    dialogsum = SHARED_DATA / "dialogsum"
    stage_one = pipeline.train(
        load_config(
            CONFIGS / "cpt-dialogsum-smollm2.yaml",
            [
                f"data.train={dialogsum / 'train.jsonl'}",
                f"data.test={dialogsum / 'validation.jsonl'}",
                "data.max_train_examples=48",
                "data.max_eval_examples=6",
                "data.max_length=128",
                "training.max_steps=6",
                "training.precision=fp32",
                "eval.retention_suite=null",
                f"output_dir={tmp_path / 'one'}",
            ],
        )
    )
    task = only_task(json.loads(stage_one.eval_path.read_text()))
    assert value(task["tuned"], "perplexity") < value(task["base"], "perplexity") * 0.9
    stage_two = pipeline.train(
        load_config(
            CONFIGS / "summarise-dialogsum-smollm2.yaml",
            [
                f"model.name={stage_one.path}",
                f"data.train={dialogsum / 'train.jsonl'}",
                f"data.validation={dialogsum / 'validation.jsonl'}",
                f"data.test={dialogsum / 'test.jsonl'}",
                "data.max_train_examples=4",
                "data.max_eval_examples=2",
                "data.max_length=256",
                "training.max_steps=1",
                "training.precision=fp32",
                "eval.max_new_tokens=8",
                f"output_dir={tmp_path / 'two'}",
            ],
        )
    )
    assert (stage_one.path / "merged" / "model.safetensors").is_file()
    assert json.loads(stage_two.state_path.read_text())["state"] == "complete"
    assert (
        f"run `cpt-dialogsum-smollm2` ({stage_one.path.resolve()}): language_modeling"
        in stage_two.card_path.read_text()
    )
