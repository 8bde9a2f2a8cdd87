"""Turning records into model text: prompt templates and chat formatting.

A prompt template is a Python format string over record fields
('Summarise:\\n{dialogue}'). For decoders, the rendered prompt becomes the user
turn of the model's chat template when it has one; a base model without one
gets the prompt followed by a newline, and learns to answer after it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig, fill_template


def render_prompt(fields: dict[str, Any], data: DataConfig) -> str:
    """The prompt text for one record."""
    if data.prompt_template:
        return fill_template(data.prompt_template, fields)
    return str(fields[data.prompt_field])


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


Demonstration = tuple[str, str]
"""A solved example shown before a prompt (few-shot prompting): its prompt and its answer."""


def with_demonstrations(prompt: str, demonstrations: Sequence[Demonstration]) -> str:
    """A prompt after its demonstrations in plain text (base models, encoder-decoders): each laid out as training
    lays out an example, the prompt, a newline and the answer, and blocks separated by a blank line."""
    return "\n\n".join([f"{shown}\n{answer}" for shown, answer in demonstrations] + [prompt])


def format_decoder_prompt(
    prompt: str, tokenizer: PreTrainedTokenizerBase, demonstrations: Sequence[Demonstration] = ()
) -> str:
    """The full text the decoder sees before its answer starts; demonstrations come first, as earlier user and
    assistant turns of a chat model, or in the text of a base model."""
    if has_chat_template(tokenizer):
        turns = [
            {"role": role, "content": content}
            for shown, answer in demonstrations
            for role, content in (("user", shown), ("assistant", answer))
        ]
        return tokenizer.apply_chat_template(
            [*turns, {"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"{with_demonstrations(prompt, demonstrations)}\n"
