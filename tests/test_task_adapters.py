"""Multi-task adapters on the tiny decoder: naming, routing, isolation under AdamW, a Trainer run, save/load."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import pytest
import torch
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from tunelab.data.plan import single_task_batches
from tunelab.methods.task_adapters import (
    SHARED,
    TaskAdapterError,
    TaskRoutedTrainer,
    adapter_parameters,
    apply_task_adapters,
    batch_task,
    load_task_adapters,
    route,
    save_task_adapters,
    trainable_by_adapter,
)
from tunelab.train.trainer import PlannedOrder

TASKS = ["echo", "antonym"]
ECHO = [
    ("repeat the word film", "film"),
    ("repeat the word story", "story"),
    ("repeat the word cast", "cast"),
    ("repeat the word score", "score"),
]
ANTONYM = [
    ("opposite of great", "awful"),
    ("opposite of boring", "moving"),
    ("opposite of superb", "dreadful"),
    ("opposite of dull", "brilliant"),
]
DATA = {"echo": ECHO, "antonym": ANTONYM}


def lora_config() -> LoraConfig:
    return LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])


def base(tiny_decoder: str):
    return AutoModelForCausalLM.from_pretrained(tiny_decoder)


def examples(tokenizer, task: str) -> list[dict]:
    """Prompt and answer as one causal-LM sequence, labelled on every token, tagged with its task."""
    rows = []
    for prompt, answer in DATA[task]:
        ids = tokenizer(f"{prompt} {answer}")["input_ids"]
        rows.append({"input_ids": ids, "labels": ids, "task": task})
    return rows


def collate(rows: list[dict]) -> dict:
    """Right-pad to the longest row (pad id 0, labels -100) and carry every row's task name along."""
    width = max(len(r["input_ids"]) for r in rows)
    pad = [width - len(r["input_ids"]) for r in rows]
    return {
        "input_ids": torch.tensor([r["input_ids"] + [0] * n for r, n in zip(rows, pad)]),
        "attention_mask": torch.tensor([[1] * len(r["input_ids"]) + [0] * n for r, n in zip(rows, pad)]),
        "labels": torch.tensor([r["labels"] + [-100] * n for r, n in zip(rows, pad)]),
        "task": [r["task"] for r in rows],
    }


def snapshot(model) -> dict[str, list[torch.Tensor]]:
    return {name: [p.detach().clone() for p in adapter_parameters(model, name)] for name in model.peft_config}


def changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> list[bool]:
    return [not torch.equal(b, a) for b, a in zip(before, after)]


@torch.no_grad()
def task_loss(model, task: str, rows: list[dict]) -> float:
    route(model, task)
    batch = collate(rows)
    batch.pop("task")
    return model(**batch).loss.item()


@torch.no_grad()
def logits(model, task: str, input_ids: torch.Tensor) -> torch.Tensor:
    route(model, task)
    return model(input_ids=input_ids).logits


@pytest.fixture(scope="module")
def tokenizer(tiny_decoder):
    return AutoTokenizer.from_pretrained(tiny_decoder)


@pytest.mark.parametrize("shared", [False, True])
def test_apply_adds_one_adapter_per_task_over_a_frozen_base(shared, tiny_decoder):
    model = apply_task_adapters(base(tiny_decoder), TASKS, lora_config(), shared=shared)

    expected = {*TASKS, SHARED} if shared else set(TASKS)
    assert set(model.peft_config) == expected
    adapter_ids = {id(p) for name in expected for p in adapter_parameters(model, name)}
    base_params = [p for p in model.parameters() if id(p) not in adapter_ids]
    assert base_params and not any(p.requires_grad for p in base_params)
    assert all(p.requires_grad for p in model.parameters() if id(p) in adapter_ids)
    counts = trainable_by_adapter(model)
    assert set(counts) == expected
    # q_proj and v_proj in 2 layers, r=4: A is 4x32 each, B is 32x4 (q) and 16x4 (v, 2 kv heads of 8).
    assert set(counts.values()) == {2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)}


@pytest.mark.parametrize("bad", [[SHARED], ["default"], ["a"], ["mlp"], ["not-a-name"], ["echo", "echo"], []])
def test_names_peft_would_mishandle_are_rejected(bad, tiny_decoder):
    with pytest.raises(TaskAdapterError):
        apply_task_adapters(base(tiny_decoder), bad, lora_config())


def test_route_activates_and_unfreezes_only_the_task_and_shared(tiny_decoder):
    model = apply_task_adapters(base(tiny_decoder), TASKS, lora_config(), shared=True)

    route(model, "antonym")

    assert model.active_adapters == [SHARED, "antonym"]
    assert all(p.requires_grad for name in (SHARED, "antonym") for p in adapter_parameters(model, name))
    assert not any(p.requires_grad for p in adapter_parameters(model, "echo"))


def test_unknown_task_error_lists_the_known_ones(tiny_decoder):
    model = apply_task_adapters(base(tiny_decoder), TASKS, lora_config(), shared=True)

    with pytest.raises(TaskAdapterError, match="known tasks: echo, antonym$"):
        route(model, "summarise")


@pytest.mark.parametrize("shared", [False, True])
def test_adamw_over_all_adapters_moves_only_the_routed_ones(shared, tiny_decoder, tokenizer):
    """Antonym trains first, so it has AdamW moments; then echo batches must not move it, not even by weight decay.

    That holds because zero_grad(set_to_none=True) leaves antonym's grad None and AdamW skips such parameters.
    """
    model = apply_task_adapters(base(tiny_decoder), TASKS, lora_config(), shared=shared)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    assert len(optimiser.param_groups[0]["params"]) == sum(
        len(adapter_parameters(model, n)) for n in model.peft_config
    )

    def step(task: str) -> None:
        batch = collate(examples(tokenizer, task))
        route(model, batch.pop("task")[0])
        model(**batch).loss.backward()
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)

    step("antonym")
    before = snapshot(model)
    for _ in range(3):
        step("echo")

    after = snapshot(model)
    assert all(changed(before["echo"], after["echo"]))
    assert not any(changed(before["antonym"], after["antonym"]))
    if shared:
        assert all(changed(before[SHARED], after[SHARED]))


def test_the_plan_makes_every_batch_single_task_and_covers_every_example():
    draws = [("echo", i) for i in range(5)] + [("antonym", i) for i in range(3)]
    order = single_task_batches(draws, batch=2, seed=1)

    batches = [order[i : i + 2] for i in range(0, len(order), 2)]
    assert all(len({task for task, _ in b}) == 1 for b in batches)
    assert set(order) == set(draws)
    assert len(order) == 6 + 4  # each task's last batch filled up with its own examples


def test_a_mixed_batch_is_refused():
    assert batch_task(["echo", "echo"]) == "echo"
    with pytest.raises(TaskAdapterError, match="one task"):
        batch_task(["echo", "antonym"])


class RecordingTrainer(PlannedOrder, TaskRoutedTrainer):
    """Reads the planned single-task batches in order and notes the task list of every training batch."""

    seen: list[list[str]]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.seen.append(list(inputs["task"]))
        return super().compute_loss(
            model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
        )


@dataclass
class Trained:
    model: object
    trainer: RecordingTrainer
    rows: dict[str, list[dict]]
    before: dict[str, float]
    after: dict[str, float]
    input_ids: torch.Tensor


@pytest.fixture(scope="module")
def trained(tiny_decoder, tokenizer, tmp_path_factory) -> Trained:
    """Four Trainer steps, batch size 2, over 4 echo + 4 antonym examples: one epoch of single-task batches.

    Routed to "echo" beforehand, so antonym's adapter is frozen when the
    trainer starts: it only trains if the optimizer was built over every adapter.
    """
    model = apply_task_adapters(base(tiny_decoder), TASKS, lora_config(), shared=True)
    rows = {task: examples(tokenizer, task) for task in TASKS}
    route(model, "echo")
    before = {task: task_loss(model, task, rows[task]) for task in TASKS}
    args = TrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("routed")),
        max_steps=4,
        per_device_train_batch_size=2,
        learning_rate=1e-2,
        weight_decay=0.01,
        report_to=[],
        use_cpu=True,
        remove_unused_columns=False,
        save_strategy="no",
        logging_strategy="no",
    )
    planned = single_task_batches([(task, i) for task in TASKS for i in range(len(rows[task]))], batch=2, seed=0)
    trainer = RecordingTrainer(
        model=model, args=args, train_dataset=[rows[task][i] for task, i in planned], data_collator=collate
    )
    trainer.seen = []
    trainer.train()
    model.eval()
    after = {task: task_loss(model, task, rows[task]) for task in TASKS}
    return Trained(model, trainer, rows, before, after, collate(rows["echo"][:1])["input_ids"])


def test_trainer_feeds_single_task_batches_of_both_tasks(trained):
    assert all(len(set(tasks)) == 1 for tasks in trained.trainer.seen)
    assert Counter(tasks[0] for tasks in trained.trainer.seen) == {"echo": 2, "antonym": 2}


def test_trainer_optimises_every_adapter_even_if_routed_before(trained):
    in_optimiser = {id(p) for group in trained.trainer.optimizer.param_groups for p in group["params"]}
    adapters = {id(p) for name in trained.model.peft_config for p in adapter_parameters(trained.model, name)}
    assert in_optimiser == adapters


def test_trainer_lowers_each_tasks_loss_on_its_own_data(trained):
    for task in TASKS:
        assert trained.after[task] < trained.before[task], task


def test_evaluate_takes_one_single_task_dataset_per_task(trained):
    metrics = trained.trainer.evaluate(eval_dataset=trained.rows)

    for task in TASKS:
        assert metrics[f"eval_{task}_loss"] == pytest.approx(trained.after[task], rel=1e-5), task


def test_inference_selects_the_adapter_by_task_name(trained):
    echo, antonym = (logits(trained.model, task, trained.input_ids) for task in TASKS)
    assert not torch.allclose(echo, antonym)


def test_save_then_load_reproduces_every_tasks_logits(trained, tiny_decoder, tmp_path):
    save_task_adapters(trained.model, tmp_path)
    loaded = load_task_adapters(base(tiny_decoder), tmp_path)

    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["README.md", "task_adapters.json", *TASKS, SHARED])
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    for task in TASKS:
        assert torch.equal(logits(loaded, task, trained.input_ids), logits(trained.model, task, trained.input_ids)), (
            task
        )
