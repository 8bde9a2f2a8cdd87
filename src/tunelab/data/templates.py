"""Turning records into model text: prompt templates and chat formatting.

A prompt template is a Python format string over record fields
('Summarise:\\n{dialogue}'). For decoders, the rendered prompt becomes the user
turn of the model's chat template when it has one; a base model without one
gets the prompt followed by a newline, and learns to answer after it.
"""

from __future__ import annotations

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


def format_decoder_prompt(prompt: str, tokenizer: PreTrainedTokenizerBase) -> str:
    """The full text the decoder sees before its answer starts."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return f"{prompt}\n"
