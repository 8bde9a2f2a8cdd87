"""Reading preference data from a record, in the forms TRL reads, into conversations the chat renderer lays out.

- A pair with an explicit prompt: `prompt` (a string, or messages ending with a user or tool turn), `chosen` and
  `rejected` (each a string, one assistant message, or a list holding one).
- A pair with an implicit prompt: `chosen` and `rejected` are whole conversations (lists of messages) that share
  their turns up to the last assistant turn; the shared turns are the prompt.
- An unpaired example (KTO): `prompt`, `completion` (as an answer above) and `label` (true: a good answer).

A string prompt is one user turn and a string answer one assistant turn, so every form is rendered and masked
as a conversation is (`tunelab.kinds.chat_masks`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.config import DataConfig
from tunelab.kinds.chat_messages import ConversationError, check_tool_answers, read_conversation, read_messages

Messages = list[dict[str, Any]]

LABEL_VALUES = {True: True, False: False, "true": True, "false": False}
"""What an unpaired example's label may say (1 and 0 equal True and False), and whether it marks a good answer."""


@dataclass
class Preference:
    """A prompt and its answers: `chosen` and `rejected` for a pair; an unpaired example's answer is `chosen` when
    `desirable`, else `rejected`, and the other is None."""

    prompt: Messages
    chosen: Messages | None
    rejected: Messages | None
    tools: list[dict[str, Any]] | None = None

    @property
    def paired(self) -> bool:
        return self.chosen is not None and self.rejected is not None

    @property
    def answers(self) -> list[tuple[str, Messages]]:
        """The answers there are, each with its side ('chosen', 'rejected')."""
        return [(side, answer) for side, answer in (("chosen", self.chosen), ("rejected", self.rejected)) if answer]


def prompt_field(data: DataConfig) -> str:
    """Where a preference record keeps its prompt: `data.prompt_field`, else `prompt` (TRL's name)."""
    return data.prompt_field or "prompt"


def _messages(value: list[Any], field: str) -> Messages:
    """A field holding a list of OpenAI messages, each checked as a conversation's are; ConversationError naming the
    field and the message otherwise."""
    try:
        return read_messages(value)
    except ConversationError as exc:
        raise ConversationError(f"{field}: {exc}", exc.index, exc.key) from None


def _prompt(value: Any, field: str) -> Messages:
    """A prompt: a string is one user turn; messages must end with a user (or tool) turn, which the answer follows."""
    if isinstance(value, str):
        if not value.strip():
            raise ConversationError(f"{field} is empty")
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise ConversationError(
            f"{field} must be a string or a non-empty list of messages, not {type(value).__name__}"
        )
    messages = _messages(value, field)
    if messages[-1]["role"] not in ("user", "tool"):
        raise ConversationError(
            f"{field}: the prompt's last turn is the {messages[-1]['role']}'s; it must end with the user (or tool) "
            "turn the answer replies to"
        )
    return messages


def _answer(value: Any, field: str) -> Messages:
    """An answer: a string, or one assistant message (alone or in a list)."""
    if isinstance(value, str):
        if not value.strip():
            raise ConversationError(f"{field} is empty")
        return [{"role": "assistant", "content": value}]
    listed = [value] if isinstance(value, dict) else value
    if not isinstance(listed, list) or len(listed) != 1:
        shape = f"a list of {len(listed)} messages" if isinstance(listed, list) else type(value).__name__
        raise ConversationError(
            f"{field} must be a string or one assistant message, not {shape} (put earlier turns in the prompt)"
        )
    messages = _messages(listed, field)
    if messages[0]["role"] != "assistant":
        raise ConversationError(
            f"{field}: the answer is a {messages[0]['role']} turn; it must be the assistant's (put earlier turns in "
            "the prompt)",
            0,
            "role",
        )
    return messages


def _split_implicit(chosen: Any, rejected: Any, data: DataConfig) -> tuple[Messages, Messages, Messages]:
    """Two whole conversations split into their shared prompt and their answers: the turns up to the last turn
    they share that is not the assistant's."""
    names = (data.chosen_field, data.rejected_field)
    if not all(isinstance(side, list) and side for side in (chosen, rejected)):
        raise ConversationError(
            f"no '{data.prompt_field or 'prompt'}' field, so {names[0]} and {names[1]} must be whole conversations "
            "(lists of messages) sharing their prompt; give the prompt in its own field otherwise"
        )
    first, second = _messages(chosen, names[0]), _messages(rejected, names[1])
    shared = 0
    while shared < min(len(first), len(second)) and first[shared] == second[shared]:
        shared += 1
    while shared and first[shared - 1]["role"] == "assistant":
        shared -= 1  # an answer's own opening turns are not prompt
    if not shared or len(first) != shared + 1 or len(second) != shared + 1:
        raise ConversationError(
            f"the prompts of {names[0]} and {names[1]} differ: the two conversations must be the same up to one last "
            f"assistant turn each (they share {shared} of {len(first)} and {len(second)} messages)"
        )
    return first[:shared], _answer(first[shared:], names[0]), _answer(second[shared:], names[1])


def read_preference(fields: dict[str, Any], data: DataConfig) -> Preference:
    """A record's preference example in any of the module's forms; ConversationError naming the field (and message)
    at fault: a missing answer, an empty one, a prompt that does not end with a user turn, or two conversations
    that share no prompt."""
    prompt_key = prompt_field(data)
    tools = _tools(fields.get(data.tools_field))
    if data.completion_field in fields:
        return _unpaired(fields, data, prompt_key, tools)
    missing = [key for key in (data.chosen_field, data.rejected_field) if key not in fields]
    if missing:
        raise ConversationError(
            f"no field {', '.join(repr(key) for key in missing)}: a preference pair needs '{data.chosen_field}' and "
            f"'{data.rejected_field}' (data.chosen_field, data.rejected_field), an unpaired example "
            f"'{data.completion_field}' and '{data.label_field}'"
        )
    if prompt_key in fields:
        prompt = _prompt(fields[prompt_key], prompt_key)
        chosen = _answer(fields[data.chosen_field], data.chosen_field)
        rejected = _answer(fields[data.rejected_field], data.rejected_field)
    else:
        prompt, chosen, rejected = _split_implicit(fields[data.chosen_field], fields[data.rejected_field], data)
    check_tool_answers(prompt + chosen)
    return Preference(prompt, chosen, rejected, tools)


def _unpaired(fields: dict[str, Any], data: DataConfig, prompt_key: str, tools) -> Preference:
    """An unpaired example: its prompt, its answer and whether the answer is good."""
    if prompt_key not in fields:
        raise ConversationError(f"no field '{prompt_key}': an unpaired example needs its prompt (data.prompt_field)")
    label = fields.get(data.label_field)
    if isinstance(label, (float, list, dict)) or label not in LABEL_VALUES:
        raise ConversationError(
            f"field '{data.label_field}' is {label!r}; an unpaired example's label must be true (a good answer) or "
            "false (a bad one)",
            None,
            data.label_field,
        )
    prompt = _prompt(fields[prompt_key], prompt_key)
    answer = _answer(fields[data.completion_field], data.completion_field)
    good = LABEL_VALUES[label]
    return Preference(prompt, answer if good else None, None if good else answer, tools)


def _tools(value: Any) -> list[dict[str, Any]] | None:
    """Tool definitions, read as a conversation's are."""
    if value is None:
        return None
    _, tools = read_conversation(
        {"messages": [{"role": "assistant", "content": "-"}], "tools": value}, "messages", "tools"
    )
    return tools
