"""What `tunelab data check` and a preference run's data report say about preference data: how long its examples
are against the limits that cut them."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.kinds.chat_masks import closing_text
from tunelab.kinds.preference import encoded_preference
from tunelab.records import Record


def preference_lengths(records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> dict:
    """Token lengths of each example's prompt with its longer answer and of its answers, uncut, and how many
    examples training cuts (`data.max_length`, `data.max_target_length`)."""
    from tunelab.data.lengths import length_summary

    uncut = data.model_copy(update={"max_length": 10**9, "max_target_length": 10**9})
    closing = closing_text(tokenizer)
    inputs, answers, truncated = [], [], 0
    for record in records:
        example, _ = encoded_preference(record, tokenizer, uncut, closing)
        sides = [len(example[key]) for key in ("chosen_ids", "rejected_ids") if key in example]
        inputs.append(len(example["prompt_ids"]) + max(sides))
        answers += sides
        truncated += max(sides) > data.max_target_length or inputs[-1] > data.max_length
    return {
        "input": length_summary(inputs, data.max_length),
        "answer": length_summary(answers, data.max_target_length),
        "truncated": truncated,
    }
