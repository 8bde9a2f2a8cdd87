"""Turning record fields and messages into the text a model reads: the one renderer for training, scoring and
serving.

A prompt template is a Python format string over record fields ('Summarise:\\n{dialogue}'). A decoder reads a
prompt as the user turn of its chat template when it has one; a base model without one gets the prompt followed by a
newline, and learns to answer after it. Kept at the bottom layer, beside the errors, because the config validates
templates and every stage above renders them.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for annotations: the config imports this module, and must not pay transformers' import
    from transformers import PreTrainedTokenizerBase


class _Blank(str):
    """The empty text that also answers any key, so a template with `{field[key]}` can be trial-filled."""

    def __getitem__(self, key):
        return _Blank()


def template_fields(template: str) -> list[str]:
    """The record fields a prompt template reads, in order of first use; ValueError, saying why, for a template
    that could not be filled from a record's fields. A placeholder names a field (`{text}`) or a key of a field
    holding a mapping (`{target[span1_text]}`, as in SuperGLUE's WSC)."""
    names: list[str] = []
    for _, placeholder, _, _ in string.Formatter().parse(template):
        if placeholder is not None:
            if not re.fullmatch(r"[A-Za-z_]\w*(\[[^\[\]]+\])*", placeholder):
                raise ValueError(
                    f"prompt_template placeholder '{{{placeholder}}}' must name a record field, e.g. {{text}}, "
                    "or a key of one, e.g. {target[span1_text]}"
                )
            name = placeholder.split("[")[0]
            if name not in names:
                names.append(name)
    template.format(**{name: _Blank() for name in names})  # a conversion or format spec text cannot take fails here
    return names


def _template_value(value: Any) -> Any:
    """A record value as a prompt shows it: token lists joined with spaces, mappings kept so `{field[key]}` can
    reach inside them, everything else as text."""
    if isinstance(value, list):
        return " ".join(map(str, value))
    if isinstance(value, dict):
        return {str(key): _template_value(item) for key, item in value.items()}
    return str(value)


def fill_template(template: str, fields: dict[str, Any]) -> str:
    """The prompt a template makes of one record's fields: the one renderer for training, scoring and serving.
    Surrounding whitespace is dropped, so an optional last field left empty (Alpaca's `input`) leaves no dangling
    blank lines. ValueError, naming the field or key, when the record lacks one the template reads."""
    try:
        return template.format(**{name: _template_value(value) for name, value in fields.items()}).strip()
    except KeyError as exc:
        raise ValueError(f"the template reads {exc.args[0]!r}, which the record does not have") from None
    except TypeError:  # `{field[key]}` on a field that holds text
        raise ValueError("the template reads a key of a field that holds text, not a mapping") from None


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
        return render_chat([*turns, {"role": "user", "content": prompt}], tokenizer, add_generation_prompt=True)
    return f"{with_demonstrations(prompt, demonstrations)}\n"


Message = dict[str, str]
"""One chat turn as chat templates read it: {"role": "system" | "user" | "assistant", "content": text}."""


def render_chat(messages: Sequence[Message], tokenizer: PreTrainedTokenizerBase, add_generation_prompt: bool) -> str:
    """Chat turns as the model's chat template lays them out (`add_generation_prompt`: ending where the assistant's
    answer starts). ValueError when the model has no chat template; the template's own refusals (roles that do not
    alternate, ...) propagate for the caller to name."""
    if not has_chat_template(tokenizer):
        raise ValueError("the model has no chat template")
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=add_generation_prompt)
