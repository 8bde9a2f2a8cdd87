"""Shared encoder with task-specific heads: routing, weighted loss, save/load, and the HF Trainer loop."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoTokenizer, Trainer, TrainingArguments

from tunelab.models.multihead import MultiHeadClassifier, build_multihead

from helpers import descend

TASKS = {
    "sst2": ["negative", "positive"],
    "rte": ["entailment", "not_entailment"],
    "topic": ["film", "music", "food"],
}
SST2, RTE, TOPIC = range(3)
EXAMPLES = [  # (text, task id, label id)
    ("the film was wonderful", SST2, 1),
    ("the story was dull", SST2, 0),
    ("a cat sleeps . an animal sleeps", RTE, 0),
    ("a cat sleeps . a dog barks", RTE, 1),
    ("the cast and the script", TOPIC, 0),
    ("the score and the melody", TOPIC, 1),
    ("the soup and the bread", TOPIC, 2),
    ("the ending was brilliant", SST2, 1),
]


@pytest.fixture
def tokenizer(tiny_encoder):
    return AutoTokenizer.from_pretrained(tiny_encoder)


def make_batch(tokenizer, examples=EXAMPLES) -> dict[str, torch.Tensor]:
    texts, task_ids, labels = zip(*examples)
    batch = dict(tokenizer(list(texts), padding=True, return_tensors="pt"))
    return {**batch, "task_ids": torch.tensor(task_ids), "labels": torch.tensor(labels)}


def head_grads(model: MultiHeadClassifier) -> list[torch.Tensor | None]:
    return [head[1].weight.grad for head in model.heads]


def is_zero(grad: torch.Tensor | None) -> bool:
    return grad is None or not grad.any()


def test_heads_are_seeded_and_independent_of_the_global_rng(tiny_encoder):
    torch.manual_seed(1)
    first = build_multihead(tiny_encoder, TASKS, seed=0)
    torch.manual_seed(2)
    second = build_multihead(tiny_encoder, TASKS, seed=0)
    other = build_multihead(tiny_encoder, TASKS, seed=1)
    for a, b, c in zip(first.heads, second.heads, other.heads):
        assert torch.equal(a[1].weight, b[1].weight)
        assert not torch.equal(a[1].weight, c[1].weight)
    assert [head[1].out_features for head in first.heads] == [2, 2, 3]
    assert first.task_names == ["sst2", "rte", "topic"]


def test_mixed_task_batch_trains_and_pads_logits(tiny_encoder, tokenizer):
    model = build_multihead(tiny_encoder, TASKS)
    batch = make_batch(tokenizer)
    logits = model(**batch).logits
    assert logits.shape == (len(EXAMPLES), 3)
    for row, (_, task, _) in zip(logits, EXAMPLES):
        width = len(TASKS[model.task_names[task]])
        assert torch.isfinite(row[:width]).all()
        assert torch.isneginf(row[width:]).all()
    losses = descend(model, batch, steps=8, lr=1e-2)
    assert losses[-1] < 0.75 * losses[0]


def test_examples_of_one_task_only_train_its_head(tiny_encoder, tokenizer):
    model = build_multihead(tiny_encoder, TASKS)
    only_sst2 = [e for e in EXAMPLES if e[1] == SST2]
    model(**make_batch(tokenizer, only_sst2)).loss.backward()
    sst2, rte, topic = head_grads(model)
    assert not is_zero(sst2)
    assert is_zero(rte) and is_zero(topic)
    assert not is_zero(model.encoder.embeddings.word_embeddings.weight.grad)


def test_predict_uses_the_named_head(tiny_encoder, tokenizer):
    model = build_multihead(tiny_encoder, TASKS).eval()
    batch = make_batch(tokenizer)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    n = len(EXAMPLES)
    with torch.no_grad():
        rte = model.predict(**inputs, task="rte")
        as_rte = model(**inputs, task_ids=torch.full((n,), RTE)).logits
        as_sst2 = model(**inputs, task_ids=torch.full((n,), SST2)).logits
        topic = model.predict(**inputs, task="topic")
    assert rte.shape == (n, 2) and topic.shape == (n, 3)
    torch.testing.assert_close(rte, as_rte[:, :2])
    assert not torch.allclose(rte, as_sst2[:, :2])
    with pytest.raises(KeyError, match="unknown task 'mnli'"):
        model.predict(**inputs, task="mnli")


def per_example_ce(model: MultiHeadClassifier, logits: torch.Tensor, batch) -> torch.Tensor:
    """Cross-entropy of each row against its own head's labels, from the trimmed logits."""
    widths = [len(TASKS[model.task_names[t]]) for t in batch["task_ids"].tolist()]
    return torch.stack(
        [F.cross_entropy(row[:width], label) for row, width, label in zip(logits, widths, batch["labels"])]
    )


def test_loss_weights_give_the_weighted_mean_of_per_example_losses(tiny_encoder, tokenizer):
    model = build_multihead(tiny_encoder, TASKS).eval()
    batch = make_batch(tokenizer)
    weights = torch.where(batch["task_ids"] == SST2, 2.0, 1.0)
    output = model(**batch, loss_weights=weights)
    ce = per_example_ce(model, output.logits.detach(), batch)
    expected = (weights * ce).sum() / weights.sum()
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(model(**batch).loss, ce.mean())
    assert not math.isclose(expected.item(), ce.mean().item(), rel_tol=1e-4)


def test_zero_weight_removes_a_tasks_gradient_from_its_head(tiny_encoder, tokenizer):
    model = build_multihead(tiny_encoder, TASKS)
    batch = make_batch(tokenizer)
    weights = torch.where(batch["task_ids"] == TOPIC, 0.0, 1.0)
    model(**batch, loss_weights=weights).loss.backward()
    sst2, rte, topic = head_grads(model)
    assert is_zero(topic)
    assert not is_zero(sst2) and not is_zero(rte)


def test_save_then_load_reproduces_every_head(tiny_encoder, tokenizer, tmp_path):
    model = build_multihead(tiny_encoder, TASKS, seed=3).eval()  # load builds with seed 0: heads must come from disk
    batch = make_batch(tokenizer)
    model.save(tmp_path / "mh")
    loaded = MultiHeadClassifier.load(tmp_path / "mh").eval()
    text = [batch[k] for k in ("input_ids", "attention_mask")]
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, loaded(**batch).logits)
        for task in TASKS:
            assert torch.equal(
                model.predict(*text, task, batch["token_type_ids"]),
                loaded.predict(*text, task, batch["token_type_ids"]),
            )
    settings = json.loads((tmp_path / "mh" / "multihead.json").read_text())
    assert settings == {"tasks": TASKS, "dropout": 0.1, "hidden_size": 32}
    assert list(settings["tasks"]) == list(TASKS)
    heads = load_file(tmp_path / "mh" / "heads.safetensors")
    assert set(heads) == {f"{t}.{p}" for t in TASKS for p in ("weight", "bias")}
    assert (tmp_path / "mh" / "encoder" / "model.safetensors").is_file()


class Collator:
    """Pads the tokenised text and stacks the per-example task ids and labels: what the model's forward takes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        text = self.tokenizer.pad(
            [{k: r[k] for k in ("input_ids", "attention_mask", "token_type_ids")} for r in rows], return_tensors="pt"
        )
        return {
            **text,
            "task_ids": torch.tensor([r["task_ids"] for r in rows]),
            "labels": torch.tensor([r["labels"] for r in rows]),
        }


def test_plugs_into_the_hf_trainer(tiny_encoder, tokenizer, tmp_path):
    model = build_multihead(tiny_encoder, TASKS)
    before = [head[1].weight.detach().clone() for head in model.heads]
    rows = [{**tokenizer(text), "task_ids": task, "labels": label} for text, task, label in EXAMPLES]
    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=2,
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        save_strategy="no",
        activation_checkpointing=True,
        label_names=["labels", "task_ids"],
    )
    trainer = Trainer(model=model, args=args, train_dataset=rows, data_collator=Collator(tokenizer))
    trainer.train()
    assert trainer.state.global_step == 2
    assert model.encoder.is_activation_checkpointing
    assert all(math.isfinite(log["loss"]) for log in trainer.state.log_history if "loss" in log)
    assert all(not torch.equal(b, head[1].weight) for b, head in zip(before, model.heads))

    prediction = trainer.predict(rows)
    labels, task_ids = prediction.label_ids
    assert prediction.predictions.shape == (len(EXAMPLES), 3)
    assert math.isfinite(prediction.metrics["test_loss"])
    pieces = model.by_task(prediction.predictions, task_ids)
    assert set(pieces) == set(TASKS)
    model.eval()
    batch = make_batch(tokenizer)
    for task, (mask, logits) in pieces.items():
        rows_of_task = torch.from_numpy(mask)
        with torch.no_grad():
            expected = model.predict(
                batch["input_ids"][rows_of_task],
                batch["attention_mask"][rows_of_task],
                task,
                batch["token_type_ids"][rows_of_task],
            )
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-4, atol=1e-5)
        assert (labels[mask] < len(TASKS[task])).all()
