"""Chat: a multi-turn conversation (OpenAI `messages` or ShareGPT `conversations`, tools included) trained on the
tokens of the turns meant to train, their closing tokens included (`tunelab.kinds.chat_masks`).

Evaluation asks the model for each held-out conversation's last assistant turn, given the turns before it, and
scores it against the reference; `reference_perplexity` scores the assistant tokens of the whole conversation.
A decoder reads it through its chat template: the model's own, or the one `data.chat_template` sets, which is
then saved with the run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tunelab.chat_templates import chat_template_text
from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.chat_masks import ChatTemplateError, closing_text, mask_conversation, render
from tunelab.kinds.chat_messages import ConversationError, conversation_of, last_assistant, read_conversation
from tunelab.kinds.encoding import Encoded, padded_with_ignored_labels
from tunelab.records import DataError, Record

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

SHOWN_LINES = 5
"""Records named in an error about many of them."""


class Chat(Kind):
    name = "chat"
    objective = "chat"
    needs = ("messages_field",)
    primary_metric = "rougeL"
    inline_metrics = ("rougeL", "chrf", "reference_perplexity")
    reference_answers = True
    templated = False
    perturbed = False

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

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
        """Set `data.chat_template` on the tokenizer (saved with the run), and make the token that closes an assistant
        turn the tokenizer's EOS, so generation stops where training taught the model to."""
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
        masked = [_masked(record, tokenizer, data) for record in records]
        untrained = [record.where for record, m in zip(records, masked) if not m.trained]
        if untrained:
            shown = ", ".join(untrained[:SHOWN_LINES]) + (" ..." if len(untrained) > SHOWN_LINES else "")
            raise DataError(
                f"{len(untrained)} conversation(s) train no token ({shown}): no turn of a role in data.train_roles "
                f"{data.train_roles} is left within data.max_length={data.max_length}. Raise data.max_length, add "
                "roles to data.train_roles, or drop those conversations"
            )
        examples = [
            {"input_ids": m.input_ids, "attention_mask": [1] * len(m.input_ids), "labels": m.labels} for m in masked
        ]
        return Encoded(examples, sum(m.truncated for m in masked))

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return padded_with_ignored_labels(tokenizer)

    def prompt_ids(self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, budget: int) -> list[int]:
        """What a model answers the conversation's last assistant turn from, within `budget` tokens: the turns
        before it and the generation prompt, the earliest turns after any system prompt dropped until it fits."""
        messages, tools = conversation_of(record, spec.messages_field, spec.tools_field)
        return reply_prompt_ids(messages[: last_assistant(messages)], tools, tokenizer, budget)


def _masked(record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig):
    """A record's conversation masked as `data` trains it; DataError naming the record when it cannot be."""
    try:
        messages, tools = conversation_of(record, data.messages_field, data.tools_field)
        return mask_conversation(messages, tools, tokenizer, data)
    except (ConversationError, ChatTemplateError) as exc:
        raise DataError(f"{record.where}: {exc}") from None


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
