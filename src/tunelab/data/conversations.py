"""What a run's conversations hold and what of them will train, counted before training (kinds that are
`conversational`, chat).

Each conversation is masked once, uncut, exactly as training masks it (`tunelab.kinds.chat_masks`), then cut to
`data.max_length` as training cuts it, so the counts are those of the tokens that will train: per role, the
conversations truncation cuts and the trained tokens it loses, and the assistant turns whose closing token it
cuts (a model never taught to close a turn never stops). The mask view shows the same conversations with the
trained spans marked, for `tunelab data check --show-masks`, the start of `tunelab train`, the card and the UI.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass
from statistics import median_low
from typing import Any

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig
from tunelab.kinds.chat import masked_record
from tunelab.kinds.chat_masks import MaskedConversation, marked_text, truncated_to
from tunelab.kinds.chat_messages import conversation_of
from tunelab.records import Record

SHOWN = 5
"""Conversations (or turns) named per finding; the counts are always complete."""
UNCUT = 10**9
"""A `data.max_length` no conversation reaches: masked whole, then cut as training cuts it."""


@dataclass
class Counted:
    """One conversation as training will see it."""

    record: Record
    masked: MaskedConversation
    """Cut to `data.max_length`, as trained."""
    length: int
    """Its tokens before the cut."""
    turns: int
    """Its messages other than the system prompt."""


def count_conversation(record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> Counted:
    """A record's conversation masked as `data` trains it, with its uncut length; DataError naming the record when
    the chat template cannot mask it."""
    masked = masked_record(record, tokenizer, data.model_copy(update={"max_length": UNCUT}))
    length = len(masked.input_ids)
    turns = sum(message["role"] != "system" for message in _messages(record, data))
    return Counted(record, truncated_to(masked, data.max_length), length, turns)


def count_conversations(records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> list[Counted]:
    return [count_conversation(record, tokenizer, data) for record in records]


def _messages(record: Record, data: DataConfig) -> list[dict[str, Any]]:
    return conversation_of(record, data.messages_field, data.tools_field)[0]


def _message_text(message: dict[str, Any]) -> str:
    """What a message says: its content and its tool calls (each function's name and arguments, as JSON)."""
    calls = [json.dumps(call["function"], ensure_ascii=False) for call in message.get("tool_calls", [])]
    return " ".join([message["content"], *calls]).strip()


def tokens_by_role(records: list[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> dict[str, int]:
    """Tokens of what each role says over all the conversations (contents and tool calls; the template's markers
    not counted), uncut."""
    messages = [message for record in records for message in _messages(record, data)]
    encoded = tokenizer([_message_text(message) for message in messages], add_special_tokens=False)["input_ids"]
    totals: Counter = Counter()
    for message, ids in zip(messages, encoded):
        totals[message["role"]] += len(ids)
    return dict(totals)


def _assistant_turns(masked: MaskedConversation) -> int:
    """The trained assistant turns of a conversation, those truncation cut away entirely included."""
    return sum(span.role == "assistant" for span in masked.spans)


def conversation_summary(
    counted: list[Counted], tokenizer: PreTrainedTokenizerBase, data: DataConfig
) -> dict[str, Any]:
    """The counts the data report gives for a split of conversations."""
    turns = [c.turns for c in counted]
    trained: Counter = Counter()
    for c in counted:
        trained.update(c.masked.trained_by_role())
    unclosed = [f"{c.record.where} (message {index})" for c in counted for index in c.masked.unclosed]
    return {
        "conversations": len(counted),
        "turns": {"min": min(turns), "median": median_low(turns), "max": max(turns)},
        "tokens_by_role": tokens_by_role([c.record for c in counted], tokenizer, data),
        "trained_by_role": dict(trained),
        "max_length": data.max_length,
        "truncated": sum(c.masked.truncated for c in counted),
        "losing": sum(c.masked.lost > 0 for c in counted),
        "lost_tokens": sum(c.masked.lost for c in counted),
        "assistant_turns": sum(_assistant_turns(c.masked) for c in counted),
        "unclosed": len(unclosed),
        "unclosed_examples": unclosed[:SHOWN],
        "untrained": [c.record.where for c in counted if not c.masked.trained],
    }


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{role} {count}" for role, count in counts.items()) or "none"


def summary_lines(found: dict[str, Any]) -> list[str]:
    """The summary as the report's Markdown lines."""
    turns = found["turns"]
    lines = [
        f"- conversations: {found['conversations']}; turns per conversation (system prompt not counted): min "
        f"{turns['min']}, median {turns['median']}, max {turns['max']}",
        f"- tokens per role (what each says, template markers not counted): {_counts(found['tokens_by_role'])}",
        f"- trained tokens per role (closing tokens included, after truncation): {_counts(found['trained_by_role'])}",
        f"- truncation to data.max_length={found['max_length']}: {found['truncated']} conversation(s) cut, "
        f"{found['losing']} of them losing trained tokens ({found['lost_tokens']} trained token(s) lost)",
        "- " + closing_line(found["assistant_turns"], found["unclosed"], found["unclosed_examples"]),
    ]
    if found["untrained"]:
        lines.append(f"- conversations that train no token: {len(found['untrained'])} ({_shown(found['untrained'])})")
    return lines


def _shown(items: list[str]) -> str:
    return ", ".join(items[:SHOWN]) + (" ..." if len(items) > SHOWN else "")


def closing_line(assistant_turns: int, unclosed: int, examples: list[str]) -> str:
    """Whether every trained assistant turn's closing token trains; truncation is what can cut one."""
    if not assistant_turns:
        return "closing tokens: no assistant turn trains"
    if not unclosed:
        return f"closing tokens: every trained assistant turn's closing token trains ({assistant_turns} turn(s))"
    return (
        f"closing tokens: {unclosed} of {assistant_turns} trained assistant turn(s) lose their closing token to "
        f"truncation, cut whole or in part ({_shown(examples)}); raise data.max_length so the model learns to stop "
        "after them"
    )


def conversation_warnings(task: str, found: dict[str, Any]) -> list[str]:
    """The report's warnings on a split of conversations: turns whose closing token is cut, conversations that
    train nothing."""
    lines = []
    if found["unclosed"]:
        lines.append(
            f"{task}: {closing_line(found['assistant_turns'], found['unclosed'], found['unclosed_examples'])}"
        )
    if found["untrained"]:
        lines.append(
            f"{task}: {len(found['untrained'])} conversation(s) train no token ({_shown(found['untrained'])})"
        )
    return lines


def _fenced(text: str) -> str:
    """`text` in a Markdown code block whose fence no run of backticks inside it closes early."""
    longest = max((len(run) for run in re.findall("`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def mask_view(counted: Counted) -> str:
    """One conversation as it trains: the counts, then its text with each trained span between [[ and ]]."""
    masked = counted.masked
    cut = (
        f"truncated from {counted.length} to {len(masked.input_ids)} tokens, {masked.lost} trained token(s) lost"
        if masked.truncated
        else f"{counted.length} tokens, not truncated"
    )
    examples = [f"message {index}" for index in masked.unclosed]
    return "\n".join(
        [
            f"### {counted.record.where}",
            "",
            f"- trained tokens per role: {_counts(dict(masked.trained_by_role()))}; {cut}",
            f"- {closing_line(_assistant_turns(masked), len(masked.unclosed), examples)}",
            "",
            _fenced(marked_text(masked).rstrip("\n")),
            "",
        ]
    )


def mask_views(counted: list[Counted]) -> str:
    """The mask view of the conversations `counted`, under a heading saying how to read it."""
    return "\n".join(
        [
            f"## What trains: the first {len(counted)} training conversation(s)",
            "",
            "Each conversation as the model reads it; the tokens that train are between [[ and ]].",
            "",
            *map(mask_view, counted),
        ]
    )
