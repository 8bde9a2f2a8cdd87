"""What a run's conversations hold and what of them will train, counted before training (kind chat)."""

from __future__ import annotations

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.kinds.chat_masks import mask_conversation
from tunelab.kinds.chat_messages import conversation_of
from tunelab.records import Record


def conversation_token_lengths(
    records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig
) -> list[int]:
    """The uncut token length of each conversation as the chat template lays it out."""
    uncut = data.model_copy(update={"max_length": 10**9})
    return [
        len(
            mask_conversation(
                *conversation_of(record, data.messages_field, data.tools_field), tokenizer, uncut
            ).input_ids
        )
        for record in records
    ]
