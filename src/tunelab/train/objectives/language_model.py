"""language_model: a decoder trained on raw text blocks with the loss on every token (continued pre-training)."""

from __future__ import annotations

from tunelab.data.blocks import BLOCK_FIELD
from tunelab.data.encode import TaskCollator, make_collator
from tunelab.records import Record
from tunelab.train.objectives.base import Feed, Objective
from tunelab.train.trainer import CompletionLossTrainer, PlannedTrainer, adds_virtual_tokens


def _block_examples(blocks: list[Record]) -> list[dict]:
    """Token blocks as causal-LM examples whose labels are their own ids: the loss covers every token."""
    return [
        {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": ids}
        for ids in (block.fields[BLOCK_FIELD] for block in blocks)
    ]


class LanguageModel(Objective):
    """Continued pre-training: the run's training and validation records are token blocks
    (`tunelab.data.blocks.pack_blocks`), already `data.max_length` long, so batches need no packing."""

    name = "language_model"
    base_note = "Base = the pretrained model before tuning, scored on the same held-out texts (lower is better)."
    trains_mixtures = False  # a two-stage recipe trains it first, then names its run as the next run's model

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
