"""What every kind's encoding shares: the encoded result, the label the loss skips, and a decoder's prompt ids.

Examples are tokenised without padding; a collator pads each batch to its own longest example (dynamic padding),
so no batch pays for the longest input in the dataset. Over-long inputs are truncated and counted, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import DataCollatorForSeq2Seq, PreTrainedTokenizerBase

from tunelab.render import Demonstration, format_decoder_prompt, has_chat_template

IGNORE_INDEX = -100
"""Label value that the loss skips: prompt tokens and padding."""


@dataclass
class Encoded:
    examples: list[dict[str, list[int]]]
    truncated: int
    """How many examples were cut to fit max_length / max_target_length."""


def formatted_prompt_ids(
    prompt: str, tokenizer: PreTrainedTokenizerBase, demonstrations: Sequence[Demonstration] = ()
) -> list[int]:
    """The uncut ids of a prompt (after any demonstrations) as the decoder reads it: through its chat template,
    which brings its own special tokens, or as plain text with the tokenizer's."""
    text = format_decoder_prompt(prompt, tokenizer, demonstrations)
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def decoder_prompt_ids(prompt: str, tokenizer: PreTrainedTokenizerBase, budget: int) -> tuple[list[int], bool]:
    """Token ids of the formatted prompt within `budget` tokens, cutting the prompt's content (never the
    chat-template markers that tell the model its answer starts)."""
    ids = formatted_prompt_ids(prompt, tokenizer)
    if len(ids) <= budget:
        return ids, False
    content = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    overhead = len(ids) - len(content)
    kept = tokenizer.decode(content[: max(1, budget - overhead)])
    return formatted_prompt_ids(kept, tokenizer)[:budget], True


def padded_with_ignored_labels(tokenizer: PreTrainedTokenizerBase) -> DataCollatorForSeq2Seq:
    """Dynamic padding per batch with labels padded with IGNORE_INDEX, so padding never counts in the loss."""
    return DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX, padding=True)
