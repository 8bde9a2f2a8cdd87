"""text_to_text: one decoder or encoder-decoder answering every task as an instruction, tuned by any method (a
`data:` generation run, or a FLAN-style mixture)."""

from __future__ import annotations

import random
from collections.abc import Callable

from torch import nn
from transformers import Trainer

from tunelab.config import RunConfig
from tunelab.data.encode import COMPILED_WIDTH_MULTIPLE, TASK_KEY, Packing, TaskCollator, make_collator
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet, TrainingTask, instruction_data
from tunelab.models.attention import follows_example_boundaries
from tunelab.models.family import task_type_of
from tunelab.train.objectives.base import Feed, Objective, encoded_examples, one_or_per_task
from tunelab.train.trainer import (
    CompletionLossTrainer,
    PlannedTrainer,
    WeightedSeq2SeqTrainer,
    adds_virtual_tokens,
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


class TextToText(Objective):
    name = "text_to_text"
    base_note = (
        "Base = the pretrained model before tuning, prompted the same way. Held-out tasks were never trained on."
    )
    serves_on_shared_base = True

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
                encoded_examples(task_type_of(config), records, tokenizer, instruction_data(config), None, "train"),
            )
        )
        return [{**encoded[key], "loss_weights": tasks.trained[key[0]].loss_weight, TASK_KEY: key[0]} for key in keys]

    def _validation(self, config, tasks: TaskSet, tokenizer) -> dict[str, list[dict]]:
        """Each task's validation records as instructions (first template)."""
        return {
            name: [
                {**e, TASK_KEY: name}
                for e in encoded_examples(
                    task_type_of(config),
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
        if task_type_of(config) == "seq2seq":
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
        return Feed(train, one_or_per_task(validation), trainer_class, collator)
