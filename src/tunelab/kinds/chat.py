"""Chat: a multi-turn conversation (OpenAI `messages` or ShareGPT `conversations`, tools included) trained on the
tokens of the turns meant to train, their closing tokens included (`tunelab.kinds.chat_masks`).

Evaluation asks the model for each held-out conversation's last assistant turn, given the turns before it, and
scores it against the reference; `reference_perplexity` scores the assistant tokens of the whole conversation.
A decoder reads it through its chat template: the model's own, or the one `data.chat_template` sets, which is
then saved with the run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.chat_masks import ChatTemplateError, MaskedConversation, closing_text, mask_conversation, render
from tunelab.kinds.chat_messages import ConversationError, conversation_of, last_assistant, read_conversation
from tunelab.kinds.encoding import Encoded, padded_with_ignored_labels
from tunelab.records import DataError, Record
from tunelab.render import has_chat_template

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

SHOWN_LINES = 5
"""Records named in an error about many of them."""


class Chat(Kind):
    name = "chat"
    objective = "chat"
    needs = ("messages_field",)
    primary_metric = "rougeL"
    inline_metrics = ("rougeL", "chrf", "reference_perplexity", "stop_rate")
    reference_answers = True
    templated = False
    perturbed = False
    conversational = True

    def check_run(self, config: Any) -> None:
        """A conversation brings its own prompts: refuse the settings of prompt -> answer data, naming the key."""
        if config.data.prompt_template or config.data.prompt_field:
            raise KindError(
                "data.kind 'chat' reads whole conversations from data.messages_field; drop data.prompt_template "
                "and data.prompt_field (use data.kind: generation for prompt -> answer data)"
            )
        if "few_shot" in config.eval.baselines:
            raise KindError(
                "eval.baselines few_shot puts solved examples before a prompt; a conversation's earlier turns are "
                "its context already: use baselines [zero_shot] or []"
            )

    def record_problem(self, record: Record, source: Any) -> str | None:
        try:
            read_conversation(record.fields, source.messages_field, source.tools_field)
        except ConversationError as exc:
            return f"{record.where}: {exc}"
        return None

    def compared_text(self, record: Record, source: Any) -> str | None:
        messages, _ = conversation_of(record, source.messages_field, source.tools_field)
        return compared_turns(messages)

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
        prepare_chat_tokenizer(tokenizer, data)

    def unreadable_by(self, tokenizer: PreTrainedTokenizerBase, spec: Any, records: Sequence[Record]) -> str | None:
        """A model without a chat template cannot be asked a conversation; one whose template cannot lay out tool
        calls and results (Gemma's) cannot be asked a task whose conversations use tools, which its first such
        record shows."""
        if not has_chat_template(tokenizer):
            return (
                "has no chat template to lay a conversation out with; evaluate a chat run tuned from it (its "
                "tokenizer carries data.chat_template), or a model that has one"
            )
        tooled = next((record for record in records if _uses_tools(record, spec)), None)
        if tooled is None:
            return None
        messages, tools = conversation_of(tooled, spec.messages_field, spec.tools_field)
        try:
            mask_conversation(messages, tools, tokenizer, DataConfig(kind=self.name, max_length=10**9))
        except ChatTemplateError as exc:
            return (
                f"has a chat template that cannot lay out this task's tool calls ({tooled.where}: {exc}); "
                "evaluate it with a run trained with data.chat_template: chatml"
            )
        return None

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return []  # messages or ShareGPT conversations, either of which will do: `record_problem`

    def target(self, spec: Any, record: Record) -> str:
        messages, _ = conversation_of(record, spec.messages_field, spec.tools_field)
        return messages[last_assistant(messages)]["content"]

    def references(self, spec: Any, records: list[Record]) -> list:
        return [self.target(spec, record) for record in records]

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return outputs

    def learning_rate(self, rates: Any) -> float:
        return rates.generative

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        return DataConfig(
            kind=self.name, messages_field=spec.messages_field, tools_field=spec.tools_field, max_length=max_length
        )

    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        return []

    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        return {
            "messages_field": config.data.messages_field,
            "tools_field": config.data.tools_field,
            "max_new_tokens": config.eval.max_new_tokens,
            "num_beams": config.eval.num_beams,
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
        if family != "decoder":
            raise KindError(f"a conversation is read by a decoder with a chat template; this model is an {family}")
        if not with_target:
            return Encoded([_reply_prompt(record, tokenizer, data) for record in records], 0)
        masked = [masked_record(record, tokenizer, data) for record in records]
        untrained = [record.where for record, m in zip(records, masked) if not m.trained]
        if untrained:
            raise nothing_trains(untrained, data)
        return Encoded([_example(m) for m in masked], sum(m.truncated for m in masked))

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return padded_with_ignored_labels(tokenizer)

    def reference_examples(
        self, spec: Any, records: list[Record], tokenizer: PreTrainedTokenizerBase, family: Family, limit: int
    ) -> list[dict[str, list[int]]]:
        """Each whole conversation masked as a run on the task trains it by default (every assistant turn with its
        closing token, `mask_conversation`), cut to `limit` tokens: its perplexity is over those tokens."""
        if family != "decoder":
            raise KindError(f"a conversation is read by a decoder with a chat template; this model is an {family}")
        data = self.data_config(spec, limit, 0, 0)
        return [_example(masked_record(record, tokenizer, data)) for record in records]

    def prompt_messages(self, spec: Any, record: Record) -> list[dict[str, Any]]:
        """The turns before the conversation's last assistant turn."""
        messages, _ = conversation_of(record, spec.messages_field, spec.tools_field)
        return messages[: last_assistant(messages)]

    def prompt_ids(self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, budget: int) -> list[int]:
        """What a model answers the conversation's last assistant turn from, within `budget` tokens: the turns
        before it and the generation prompt, the earliest turns after any system prompt dropped until it fits."""
        with named_record(record):
            messages, tools = conversation_of(record, spec.messages_field, spec.tools_field)
            return reply_prompt_ids(messages[: last_assistant(messages)], tools, tokenizer, budget)


def prepare_chat_tokenizer(tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
    """Set `data.chat_template` on the tokenizer (saved with the run), and make the token that closes an assistant
    turn the tokenizer's EOS, so generation stops where training taught the model to (every kind that reads
    conversations: chat, preference)."""
    if data.chat_template:
        try:
            tokenizer.chat_template = chat_template_text(data.chat_template)
        except ValueError as exc:
            raise KindError(str(exc)) from None
    if not getattr(tokenizer, "chat_template", None):
        raise KindError(
            "the model has no chat template, so a conversation cannot be laid out; set data.chat_template: "
            "chatml (or gemma, llama3, or a Jinja file)"
        )
    try:
        closing = closing_text(tokenizer)
    except ChatTemplateError as exc:
        raise KindError(str(exc)) from None
    ids = tokenizer(closing, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise KindError(
            f"the chat template closes a turn with {closing!r}, which this tokenizer splits into {len(ids)} "
            "tokens, so generation could not stop on it; choose a template whose markers are the model's own "
            "tokens (data.chat_template: gemma for Gemma, chatml for models with <|im_end|>)"
        )
    if tokenizer.eos_token != closing:
        tokenizer.eos_token = closing


@contextmanager
def named_record(record: Record):
    """A conversation that cannot be read or laid out (a template that refuses a tool turn) as a DataError naming
    the record (file:line)."""
    try:
        yield
    except (ConversationError, ChatTemplateError) as exc:
        raise DataError(f"{record.where}: {exc}") from None


def _uses_tools(record: Record, spec: Any) -> bool:
    """Whether a record's conversation holds a tool call or a tool result (a record that cannot be read counts as
    not: reading it again reports what is wrong)."""
    try:
        messages, _ = conversation_of(record, spec.messages_field, spec.tools_field)
    except ConversationError:
        return False
    return any(message["role"] == "tool" or message.get("tool_calls") for message in messages)


def nothing_trains(untrained: list[str], data: DataConfig) -> DataError:
    """The refusal of conversations that train no token (`untrained`: where each is), naming them and what to
    change: raised by the data report before a model loads, and by encoding for any caller that skips it."""
    shown = ", ".join(untrained[:SHOWN_LINES]) + (" ..." if len(untrained) > SHOWN_LINES else "")
    return DataError(
        f"{len(untrained)} conversation(s) train no token ({shown}): no turn of a role in data.train_roles "
        f"{data.train_roles} is left within data.max_length={data.max_length}. Raise data.max_length, add "
        "roles to data.train_roles, or drop those conversations"
    )


def compared_turns(messages: list[dict[str, Any]]) -> str:
    """A conversation as the duplicate and overlap checks compare it: each user, assistant and tool turn as
    'role: content', an assistant's tool calls as their names and arguments. The system prompt is left out, since
    a dataset often gives every conversation the same one, which would make distinct conversations look alike."""
    turns = []
    for message in messages:
        if message["role"] == "system":
            continue
        calls = [json.dumps(call["function"], sort_keys=True) for call in message.get("tool_calls", [])]
        turns.append(" ".join([f"{message['role']}: {message['content']}", *calls]))
    return "\n".join(turns)


def shown_turns(messages: list[dict[str, Any]]) -> str:
    """The turns a model answers, as a person rating its answer reads them: `compared_turns`, after the system prompt
    where there is one (it says what kind of answer is asked for)."""
    system = [f"system: {message['content']}" for message in messages[:1] if message["role"] == "system"]
    return "\n".join([*system, compared_turns(messages)])


def masked_record(record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig):
    """A record's conversation masked as `data` trains it; DataError naming the record when it cannot be."""
    with named_record(record):
        messages, tools = conversation_of(record, data.messages_field, data.tools_field)
        return mask_conversation(messages, tools, tokenizer, data)


def _example(masked: MaskedConversation) -> dict[str, list[int]]:
    """A masked conversation as a model reads it: its ids, attention over all of them, and its labels."""
    return {"input_ids": masked.input_ids, "attention_mask": [1] * len(masked.input_ids), "labels": masked.labels}


def reply_prompt_ids(
    history: list[dict[str, Any]], tools: list[dict[str, Any]] | None, tokenizer: PreTrainedTokenizerBase, budget: int
) -> list[int]:
    """The ids an assistant's next turn follows: the conversation so far through the chat template and its generation
    prompt (what `predict`, evaluation and `serve` all ask with), the earliest turns after a system prompt dropped
    while it is longer than `budget` (up to the next user turn, so what is kept still opens as a conversation does:
    Gemma's template refuses one that opens with the assistant), and at worst its last `budget` tokens."""
    kept = list(history)
    while True:
        text = render(kept, tokenizer, tools, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        first = 1 if kept and kept[0]["role"] == "system" else 0
        if len(ids) <= budget or len(kept) - first <= 1:
            return ids[-budget:]
        kept.pop(first)
        while len(kept) - first > 1 and kept[first]["role"] != "user":
            kept.pop(first)


def _reply_prompt(record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> dict[str, list[int]]:
    """A record's conversation up to its last assistant turn, as the model answers it (prediction inputs)."""
    messages, tools = conversation_of(record, data.messages_field, data.tools_field)
    ids = reply_prompt_ids(messages[: last_assistant(messages)], tools, tokenizer, data.max_length)
    return {"input_ids": ids, "attention_mask": [1] * len(ids)}
