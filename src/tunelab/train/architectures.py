"""The four architectures a run can train, behind one interface, so one pipeline trains them all.

- classifier: an encoder with one classification head, tuned by any method (a `data:` classification run);
- text_to_text: one decoder or encoder-decoder answering every task as an instruction, tuned by any method
  (a `data:` generation run, or a FLAN-style mixture);
- multi_head: one shared encoder with a classification head per task (a mixture; full fine-tuning);
- task_adapters: one LoRA adapter per task (plus an optional shared one) over a frozen decoder, each
  single-task batch routed to its adapter (a mixture);
- language_model: a decoder trained on raw text blocks with the loss on every token (continued pre-training).

Each says how to load the model before tuning (which the base scores use), how to adapt it, how to turn the
planned draws into training examples and validation sets, which trainer and collator train it, and how to save
it. How a trained model of each architecture answers a task lives with the targets (`tunelab.eval.targets`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import DataCollatorWithPadding, Trainer

from tunelab.config import DataConfig, RunConfig
from tunelab.data.blocks import BLOCK_FIELD
from tunelab.data.cache import encode_cached
from tunelab.data.encode import (
    COMPILED_WIDTH_MULTIPLE,
    TASK_KEY,
    HeadCollator,
    Packing,
    TaskCollator,
    make_collator,
)
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet, TrainingTask, instruction_data
from tunelab.methods import TrainableReport, apply_method, base_load_options, lora, method_module
from tunelab.methods.peft_common import name_base_model
from tunelab.methods.task_adapters import apply_task_adapters, save_task_adapters, trainable_by_adapter
from tunelab.models.attention import follows_example_boundaries
from tunelab.models.loading import load_base, portable_reference, resolve_source
from tunelab.models.multihead import build_multihead
from tunelab.records import Record
from tunelab.train.trainer import (
    CompletionLossTrainer,
    PlannedTrainer,
    RoutedCompletionTrainer,
    WeightedSeq2SeqTrainer,
    adds_virtual_tokens,
)


@dataclass
class Feed:
    """What the trainer reads: examples in plan order, validation sets, the trainer class and the collator."""

    train: list[dict]
    validation: list[dict] | dict[str, list[dict]] | None
    trainer_class: type[Trainer]
    collator: Callable


def _encoded(
    task_type: str,
    records: list[Record],
    tokenizer,
    data: DataConfig,
    labels: list[str] | None,
    name: str,
) -> list[dict]:
    """Token ids of records, tokenised once and then read from the token cache while data and tokenizer stay the same."""
    encoded, cached = encode_cached(task_type, records, tokenizer, data, labels)
    if cached:
        print(f"{name}: {len(records)} examples read from the token cache")
    if encoded.truncated:
        print(
            f"{name}: {encoded.truncated} of {len(records)} examples truncated to data.max_length="
            f"{data.max_length} / data.max_target_length={data.max_target_length}"
        )
    return encoded.examples


def _one_or_per_task(sets: dict[str, list[dict]]) -> list[dict] | dict[str, list[dict]] | None:
    """One task's validation set as a plain list (eval_loss, eval_accuracy), several as a dict (eval_<task>_loss)."""
    sets = {name: rows for name, rows in sets.items() if rows}
    if not sets:
        return None
    return next(iter(sets.values())) if len(sets) == 1 else sets


class Architecture(ABC):
    name: str

    def load(self, config: RunConfig, tasks: TaskSet, precision: str) -> nn.Module:
        """The model before tuning, as training wants it stored (a frozen base may be bf16)."""
        return load_base(config, tasks.labels, **base_load_options(config, precision))

    def adapt(self, model: nn.Module, config: RunConfig, tasks: TaskSet) -> tuple[nn.Module, TrainableReport]:
        return apply_method(model, config)

    @abstractmethod
    def feed(self, model: nn.Module, config: RunConfig, tasks: TaskSet, plan: Plan, tokenizer) -> Feed:
        """The planned draws as training examples, the validation sets, and the trainer and collator to read them."""

    def save(self, model: nn.Module, config: RunConfig, directory: Path) -> None:
        """Write what the method trained; a PEFT adapter names its base as another machine finds it."""
        method_module(config.method.name).save(model, directory)
        name_base_model(directory, portable_reference(config.model.name))


class Classifier(Architecture):
    name = "classifier"

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        (task,) = tasks.trained.values()
        train = _encoded("classification", task.train, tokenizer, config.data, tasks.labels, "train")
        validation = _encoded("classification", task.validation, tokenizer, config.data, tasks.labels, "validation")
        return Feed(
            [train[index] for _, index in plan.order], validation, PlannedTrainer, DataCollatorWithPadding(tokenizer)
        )


def packing_of(model: nn.Module, config: RunConfig) -> Packing | None:
    """How a decoder run packs its batches: not at all with `training.packing: false`; the whole batch in one
    row when the model's attention follows example boundaries (no padding at all); else rows of at most
    `data.max_length`, since a dense mask costs a row's length squared."""
    if not config.training.packing:
        return None
    return Packing(
        None if follows_example_boundaries(model) else config.data.max_length,
        COMPILED_WIDTH_MULTIPLE if config.training.compile else 1,
    )


def template_index(config: RunConfig, task: TrainingTask, position: int, index: int) -> int:
    """Which instruction template a draw is phrased with: the first, or one chosen per draw (seeded), FLAN style."""
    if config.mixture is None or config.mixture.templates == "first" or len(task.spec.templates) < 2:
        return 0
    return random.Random(f"{config.training.seed}:{task.spec.name}:{index}:{position}").randrange(
        len(task.spec.templates)
    )


class TextToText(Architecture):
    name = "text_to_text"

    def _examples(self, config, tasks: TaskSet, plan: Plan, tokenizer) -> list[dict]:
        """One example per planned draw; each distinct (task, record, template) is tokenised once."""
        keys = [
            (task, index, template_index(config, tasks.trained[task], position, index))
            for position, (task, index) in enumerate(plan.order)
        ]
        distinct = list(dict.fromkeys(keys))
        records = [
            tasks.trained[task].spec.instruction(tasks.trained[task].train[index], template)
            for task, index, template in distinct
        ]
        encoded = dict(
            zip(
                distinct,
                _encoded(config.task_type, records, tokenizer, instruction_data(config), None, "train"),
            )
        )
        return [{**encoded[key], "loss_weights": tasks.trained[key[0]].loss_weight, TASK_KEY: key[0]} for key in keys]

    def _validation(self, config, tasks: TaskSet, tokenizer) -> dict[str, list[dict]]:
        """Each task's validation records as instructions (first template)."""
        return {
            name: [
                {**e, TASK_KEY: name}
                for e in _encoded(
                    config.task_type,
                    [task.spec.instruction(r) for r in task.validation],
                    tokenizer,
                    instruction_data(config),
                    None,
                    f"{name} validation",
                )
            ]
            for name, task in tasks.trained.items()
            if task.validation
        }

    def _trainer_and_collator(self, model, config, tokenizer) -> tuple[type[Trainer], Callable]:
        if config.task_type == "seq2seq":
            return WeightedSeq2SeqTrainer, TaskCollator(make_collator("seq2seq", tokenizer))
        if adds_virtual_tokens(model):  # PEFT's virtual tokens live in the model's own forward and loss
            return PlannedTrainer, make_collator("causal_lm", tokenizer)
        return CompletionLossTrainer, TaskCollator(make_collator("causal_lm", tokenizer, packing_of(model, config)))

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        trainer_class, collator = self._trainer_and_collator(model, config, tokenizer)
        train, validation = self._examples(config, tasks, plan, tokenizer), self._validation(config, tasks, tokenizer)
        if trainer_class is PlannedTrainer:  # the model's own loss takes neither weights nor task names
            train = [{k: v for k, v in e.items() if k not in ("loss_weights", TASK_KEY)} for e in train]
            validation = {
                n: [{k: v for k, v in e.items() if k != TASK_KEY} for e in rows] for n, rows in validation.items()
            }
        return Feed(train, _one_or_per_task(validation), trainer_class, collator)


class MultiHead(Architecture):
    name = "multi_head"

    def load(self, config, tasks, precision) -> nn.Module:
        """The shared encoder with fresh, seeded heads: its untrained heads are the base scores' model."""
        heads = {name: list(task.spec.label_words) for name, task in tasks.trained.items()}
        return build_multihead(
            resolve_source(config.model.name, config.model.revision), heads, seed=config.training.seed
        )

    def adapt(self, model, config, tasks):
        total = sum(p.numel() for p in model.parameters())
        return model, TrainableReport(total, total)

    def _head_examples(
        self, config, task: TrainingTask, records: list[Record], task_id: int, weight: float, tokenizer, name: str
    ) -> list[dict]:
        for record in records:
            task.spec.label_of(record)  # an unknown label is an error naming the record
        data = task.spec.data_config(config.data.max_length)
        examples = _encoded("classification", records, tokenizer, data, list(task.spec.label_words), name)
        return [{**e, "task_ids": task_id, "loss_weights": weight} for e in examples]

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        names = list(tasks.trained)
        encoded = {
            n: self._head_examples(config, t, t.train, names.index(n), t.loss_weight, tokenizer, f"{n} train")
            for n, t in tasks.trained.items()
        }
        validation = {
            n: self._head_examples(config, t, t.validation, names.index(n), 1.0, tokenizer, f"{n} validation")
            for n, t in tasks.trained.items()
        }
        return Feed(
            [encoded[task][index] for task, index in plan.order],
            _one_or_per_task(validation),
            PlannedTrainer,
            HeadCollator(tokenizer),
        )

    def save(self, model, config, directory) -> None:
        model.save(directory)


class TaskAdapters(TextToText):
    name = "task_adapters"

    def adapt(self, model, config, tasks):
        model = apply_task_adapters(
            model, list(tasks.trained), lora.peft_config(config), shared=config.mixture.shared_adapter
        )
        total = sum(p.numel() for p in model.parameters())
        return model, TrainableReport(sum(trainable_by_adapter(model).values()), total)

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        validation = self._validation(config, tasks, tokenizer)
        return Feed(
            self._examples(config, tasks, plan, tokenizer),
            validation or None,
            RoutedCompletionTrainer,
            TaskCollator(make_collator("causal_lm", tokenizer, packing_of(model, config))),
        )

    def save(self, model, config, directory) -> None:
        save_task_adapters(model, directory)
        name_base_model(directory, portable_reference(config.model.name))


def _block_examples(blocks: list[Record]) -> list[dict]:
    """Token blocks as causal-LM examples whose labels are their own ids: the loss covers every token."""
    return [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
        for ids in (block.fields[BLOCK_FIELD] for block in blocks)
    ]


class LanguageModel(Architecture):
    """Continued pre-training: the run's training and validation records are token blocks
    (`tunelab.data.blocks.pack_blocks`), already `data.max_length` long, so batches need no packing."""

    name = "language_model"

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        (task,) = tasks.trained.values()
        train = _block_examples(task.train)
        if adds_virtual_tokens(model):  # PEFT's virtual tokens live in the model's own forward and loss
            trainer_class, collator = PlannedTrainer, make_collator("causal_lm", tokenizer)
        else:
            trainer_class, collator = CompletionLossTrainer, TaskCollator(make_collator("causal_lm", tokenizer))
        return Feed(
            [train[index] for _, index in plan.order],
            _block_examples(task.validation) or None,
            trainer_class,
            collator,
        )


ARCHITECTURES: dict[str, Architecture] = {
    a.name: a for a in (Classifier(), TextToText(), MultiHead(), TaskAdapters(), LanguageModel())
}


def architecture_of(config: RunConfig) -> Architecture:
    return ARCHITECTURES[config.architecture()]
