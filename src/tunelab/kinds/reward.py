"""Reward: a prompt with a preferred and a dispreferred answer, which a reward model learns to score apart (one
number per answer from a scalar head, trained by the pairwise loss of `tunelab.train.objectives.reward`).

Pairs are read in every paired form the preference kind reads (`tunelab.kinds.preference_pairs`); an unpaired
example is refused, since a pairwise loss needs both answers. Each answer is scored whole, after its prompt, as
one sequence: laid out by the model's chat template where it has one (the renderer chat and preference runs use,
`tunelab.kinds.chat_masks.render`), else as a plain transcript (`transcript`; an encoder such as minilm-l6 has no
template). A sequence longer than `data.max_length` loses its earliest tokens: a long prompt loses its start before
the answer judged loses anything. Evaluation counts the held-out pairs whose chosen answer scores higher
(`pairwise_accuracy`); `predict` and `serve` give the scores themselves, one for a prompt with a single answer
(`data.completion_field`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.chat import compared_turns, named_record
from tunelab.kinds.chat_masks import render
from tunelab.kinds.chat_messages import ConversationError
from tunelab.kinds.encoding import Encoded
from tunelab.kinds.preference_pairs import Messages, prompt_field, read_preference
from tunelab.records import DataError, Record
from tunelab.render import has_chat_template

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant", "tool": "Tool"}
"""How the plain transcript names each role."""

TURN_SEPARATOR = "\n\n"

PAIR_KEYS = ("score_chosen", "score_rejected")
"""What a pair's two scores are reported under (`predict`, and what pairwise accuracy compares)."""

SINGLE_KEY = "score"
"""What the score of a prompt with one answer is reported under."""

UNPAIRED = (
    "an unpaired example (prompt, completion, label) has one answer, and a reward model learns from pairs: give "
    "the record a chosen and a rejected answer (unpaired examples train a policy: data.kind preference with "
    "training.preference.loss kto)"
)


def transcript(messages: Messages) -> str:
    """A conversation as plain text, for a model without a chat template: 'User: ...', a blank line, 'Assistant:
    ...', an assistant's tool calls written as `name({arguments})` after its content."""
    turns = []
    for message in messages:
        calls = [
            f"{call['function']['name']}({json.dumps(call['function']['arguments'], sort_keys=True)})"
            for call in message.get("tool_calls", [])
        ]
        turns.append(f"{ROLE_NAMES[message['role']]}: " + " ".join([message["content"], *calls]).strip())
    return TURN_SEPARATOR.join(turns)


def conversation_ids(
    messages: Messages, tools: list[dict[str, Any]] | None, tokenizer: PreTrainedTokenizerBase, limit: int
) -> tuple[list[int], int]:
    """A conversation's token ids as a reward model reads it, cut to its last `limit` tokens (the special tokens
    the tokenizer adds around a transcript are kept), and its length uncut. Through the chat template when the
    tokenizer has one (ChatTemplateError when it refuses the conversation), else as a `transcript`."""
    if has_chat_template(tokenizer):
        ids = tokenizer(render(messages, tokenizer, tools, add_generation_prompt=False), add_special_tokens=False)
        return ids["input_ids"][-limit:], len(ids["input_ids"])
    text = transcript(messages)
    body, whole = tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer(text)["input_ids"]
    start = next(i for i in range(len(whole) - len(body) + 1) if whole[i : i + len(body)] == body)
    room = max(1, limit - (len(whole) - len(body)))
    return whole[:start] + body[-room:] + whole[start + len(body) :], len(whole)


def scored_conversations(fields: dict[str, Any], data: DataConfig) -> tuple[dict[str, Messages], Any]:
    """What a reward model scores of a record, by the key each score is reported under: a pair's prompt followed
    by each answer (PAIR_KEYS), or a prompt followed by its one answer (`data.completion_field`, SINGLE_KEY)
    whatever its label says; and the record's tools. ConversationError naming the field when it cannot be read."""
    if data.completion_field in fields:
        one = read_preference(
            {**fields, data.label_field: True}, data
        )  # read as a good answer: a score has no verdict
        return {SINGLE_KEY: one.prompt + one.chosen}, one.tools
    pair = read_preference(fields, data)
    return {key: pair.prompt + answer for key, (_, answer) in zip(PAIR_KEYS, pair.answers)}, pair.tools


@dataclass
class RewardPairs:
    """A batch of pairs as one forward reads it: every chosen sequence, then every rejected one, padded on the right
    (a decoder's head reads the last token that is not padding), with their attention mask."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict:
        import torch

        rows = [f["chosen_ids"] for f in features] + [f["rejected_ids"] for f in features]
        width = max(map(len, rows))
        return {
            "input_ids": torch.tensor([row + [self.pad_token_id] * (width - len(row)) for row in rows]),
            "attention_mask": torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows]),
        }


class RewardKind(Kind):
    name = "reward"
    objective = "reward"
    needs = ()
    primary_metric = "pairwise_accuracy"
    inline_metrics = ("pairwise_accuracy",)
    templated = False
    perturbed = False
    checked_as_run_data = False
    paired = True
    families = ("encoder", "decoder")
    head_labels = ("reward",)
    scored_by_reward = True

    def check_run(self, config: Any) -> None:
        if config.data.prompt_template:
            raise KindError(
                "data.kind 'reward' reads a prompt and two answers per record; drop data.prompt_template and name "
                "the prompt's field with data.prompt_field (default 'prompt')"
            )

    def record_problem(self, record: Record, source: Any) -> str | None:
        """A run's data (`source` a DataConfig) trains, so its records must be pairs; a task's records may also be
        a prompt with one answer to score (`predict`), which pairwise accuracy refuses where it compares pairs."""
        try:
            scored, _ = scored_conversations(record.fields, _fields_of(source))
        except ConversationError as exc:
            return f"{record.where}: {exc}"
        return f"{record.where}: {UNPAIRED}" if isinstance(source, DataConfig) and SINGLE_KEY in scored else None

    def compared_text(self, record: Record, source: Any) -> str | None:
        """The prompt's turns and both answers, as the preference kind compares a pair."""
        with named_record(record):
            pair = read_preference(record.fields, _fields_of(source))
        return compared_turns(pair.prompt + [message for _, answer in pair.answers for message in answer])

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
        """`data.chat_template` on the tokenizer, saved with the run; a model without one reads transcripts."""
        if data.chat_template:
            try:
                tokenizer.chat_template = chat_template_text(data.chat_template)
            except ValueError as exc:
                raise KindError(str(exc)) from None

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return []  # an explicit or implicit prompt with a pair: `record_problem` checks the form

    def target(self, spec: Any, record: Record) -> str:
        """The preferred answer."""
        with named_record(record):
            return read_preference(record.fields, _fields_of(spec)).chosen[0]["content"]

    def references(self, spec: Any, records: list[Record]) -> list:
        return [None] * len(records)  # pairwise accuracy compares each pair's own two scores

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return outputs

    def learning_rate(self, rates: Any) -> float:
        return rates.with_head

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        return DataConfig(
            kind=self.name,
            prompt_field=spec.prompt_field,
            chosen_field=spec.chosen_field,
            rejected_field=spec.rejected_field,
            tools_field=spec.tools_field,
            max_length=max_length,
        )

    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        return []

    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        data = config.data
        return {
            "prompt_field": prompt_field(data),
            "chosen_field": data.chosen_field,
            "rejected_field": data.rejected_field,
            "tools_field": data.tools_field,
        }

    def answer_field(self, data: DataConfig) -> str | None:
        return None

    def task_answer_field(self, spec: Any) -> str | None:
        return None

    def encode(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        family: Family,
        labels: list[str] | None,
        with_target: bool,
    ) -> Encoded:
        """Each pair's two sequences (`chosen_ids`, `rejected_ids`), a reward model's input whether or not it is
        trained on them; an example is cut when either sequence is."""
        if family not in self.families:
            raise KindError(f"a reward model is a scalar head on an encoder or a decoder; this model is an {family}")
        examples, cut = [], 0
        for record in records:
            scored = _scored(record, tokenizer, data, data.max_length)
            if SINGLE_KEY in scored:
                raise DataError(f"{record.where}: {UNPAIRED}")
            examples.append({f"{side}_ids": scored[key][0] for side, key in zip(("chosen", "rejected"), PAIR_KEYS)})
            cut += any(length > data.max_length for _, length in scored.values())
        return Encoded(examples, cut)

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return RewardPairs(tokenizer.pad_token_id)

    def scored_ids(
        self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, limit: int
    ) -> dict[str, list[int]]:
        return {key: ids for key, (ids, _) in _scored(record, tokenizer, _fields_of(spec), limit).items()}

    def input_lengths(
        self, records: Sequence[Record], tokenizer: PreTrainedTokenizerBase, data: DataConfig
    ) -> list[int] | None:
        """Each record's longer scored sequence, uncut."""
        return [max(length for _, length in _scored(r, tokenizer, data, data.max_length).values()) for r in records]


def _fields_of(source: Any) -> DataConfig:
    """Field names as a `DataConfig` holds them, from a run's data section or a task."""
    if isinstance(source, DataConfig):
        return source
    return RewardKind().data_config(source, source.max_length or 10**9, 0, 0)


def _scored(
    record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig, limit: int
) -> dict[str, tuple[list[int], int]]:
    """A record's scored sequences (`scored_conversations`), each as its ids within `limit` and its length uncut;
    DataError naming the record when it cannot be read or laid out."""
    with named_record(record):
        conversations, tools = scored_conversations(record.fields, data)
        return {key: conversation_ids(messages, tools, tokenizer, limit) for key, messages in conversations.items()}
