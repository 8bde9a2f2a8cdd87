"""Preference: a prompt with a preferred and a dispreferred answer (or one answer judged good or bad), trained by
a preference loss (`tunelab.train.objectives.preference`) and read in the forms `tunelab.kinds.preference_pairs`
describes.

Prompt and answers are a conversation, laid out by the chat template and masked as a chat run masks its last
assistant turn (`tunelab.kinds.chat_masks`), so an answer's tokens, its closing token included, are exactly what
a chat run on the same conversation would train. The two answers of a pair share the prompt's tokens; an encoded
example keeps them once (`prompt_ids`), for training to compute them once.

Evaluation scores whether the model finds the chosen answer likelier than the rejected one (per token), and asks
it each held-out prompt to see how it answers (its length, a reward model's verdict, a human's).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind, KindError
from tunelab.kinds.chat import compared_turns, named_record, prepare_chat_tokenizer, reply_prompt_ids
from tunelab.kinds.chat_masks import closing_text, mask_conversation
from tunelab.kinds.chat_messages import ConversationError
from tunelab.kinds.encoding import IGNORE_INDEX, Encoded, padded_with_ignored_labels
from tunelab.kinds.preference_pairs import Preference, prompt_field, read_preference
from tunelab.records import Record
from tunelab.render import has_chat_template

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase

RATE_SCALE = 0.1
"""A preference run's default learning rate, as a share of the method's rate for generation: preference losses
move a policy that is already tuned, and DPO recipes train ~10x lower than SFT (TRL's DPOConfig defaults to 1e-6
for full fine-tuning, LLaMA-Factory's LoRA DPO example to 5e-6)."""


class PreferenceKind(Kind):
    name = "preference"
    objective = "preference"
    needs = ()
    primary_metric = "preference_accuracy"
    inline_metrics = ("preference_accuracy", "answer_words")
    templated = False
    perturbed = False
    cuts_answers = True
    checked_as_run_data = False
    paired = True

    def check_run(self, config: Any) -> None:
        if config.data.prompt_template:
            raise KindError(
                "data.kind 'preference' reads a prompt and two answers per record; drop data.prompt_template and "
                "name the prompt's field with data.prompt_field (default 'prompt')"
            )
        if "few_shot" in config.eval.baselines:
            raise KindError("eval.baselines few_shot is for prompt -> answer tasks; use baselines [zero_shot] or []")

    def record_problem(self, record: Record, source: Any) -> str | None:
        try:
            read_preference(record.fields, _data_of(source))
        except ConversationError as exc:
            return f"{record.where}: {exc}"
        return None

    def compared_text(self, record: Record, source: Any) -> str | None:
        """The prompt's turns and both answers: a pair copied into the test split is found whichever answer it
        names first."""
        pair = preference_of(record, _data_of(source))
        return compared_turns(pair.prompt + [message for _, answer in pair.answers for message in answer])

    def prepare_tokenizer(self, tokenizer: PreTrainedTokenizerBase, data: DataConfig) -> None:
        prepare_chat_tokenizer(tokenizer, data)

    def unreadable_by(self, tokenizer: PreTrainedTokenizerBase, spec: Any, records: Sequence[Record]) -> str | None:
        if not has_chat_template(tokenizer):
            return (
                "has no chat template to lay a prompt and its answers out with; evaluate a preference run tuned "
                "from it (its tokenizer carries data.chat_template), or a model that has one"
            )
        return None

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return []  # an explicit or implicit prompt, a pair or an unpaired answer: `record_problem` checks the form

    def target(self, spec: Any, record: Record) -> str:
        """The preferred answer (an unpaired example's answer when it is a good one; nothing when it is a bad one)."""
        chosen = preference_of(record, _data_of(spec)).chosen
        return chosen[0]["content"] if chosen else ""

    def references(self, spec: Any, records: list[Record]) -> list:
        return [self.target(spec, record) for record in records]

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return outputs

    def learning_rate(self, rates: Any) -> float:
        return rates.generative * RATE_SCALE

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        return DataConfig(
            kind=self.name,
            prompt_field=spec.prompt_field,
            chosen_field=spec.chosen_field,
            rejected_field=spec.rejected_field,
            tools_field=spec.tools_field,
            max_length=max_length,
            max_target_length=max_target_length,
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
            "max_new_tokens": config.eval.max_new_tokens,
            "num_beams": config.eval.num_beams,
        }

    def answer_field(self, data: DataConfig) -> str | None:
        """An unpaired example's label: one prompt and answer judged both good and bad is a conflict, and only
        copies judged alike are duplicates (a pair has no label; pairs are compared by their turns alone)."""
        return data.label_field

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
            raise KindError(f"preference tuning trains a decoder with a chat template; this model is an {family}")
        if not with_target:
            prompts = [self.prompt_ids(data, record, tokenizer, data.max_length) for record in records]
            return Encoded([{"input_ids": ids, "attention_mask": [1] * len(ids)} for ids in prompts], 0)
        closing = closing_text(tokenizer)
        encoded = [encoded_preference(record, tokenizer, data, closing) for record in records]
        return Encoded([example for example, _ in encoded], sum(cut for _, cut in encoded))

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        return padded_with_ignored_labels(tokenizer)  # prediction inputs; training's rows: tunelab.data.pair_rows

    def prompt_messages(self, spec: Any, record: Record) -> list[dict[str, Any]]:
        """The pair's prompt turns, which both answers reply to."""
        return preference_of(record, _data_of(spec)).prompt

    def prompt_ids(self, spec: Any, record: Record, tokenizer: PreTrainedTokenizerBase, budget: int) -> list[int]:
        """What the model answers a record's prompt from: its turns and the generation prompt, within `budget`."""
        pair = preference_of(record, _data_of(spec))
        with named_record(record):
            return reply_prompt_ids(pair.prompt, pair.tools, tokenizer, budget)

    def preference_examples(
        self, spec: Any, records: list[Record], tokenizer: PreTrainedTokenizerBase, limit: int
    ) -> list[tuple[dict[str, list[int]], dict[str, list[int]]]]:
        """Each pair's chosen and rejected answer as a continuation of its prompt, labelled on the answer's tokens,
        within `limit` tokens: what preference accuracy compares the per-token likelihoods of. An unpaired example
        (one answer judged good or bad) has nothing to compare and is left out."""
        data = _data_of(spec).model_copy(update={"max_length": limit})
        closing, pairs = closing_text(tokenizer), []
        for record in records:
            example, _ = encoded_preference(record, tokenizer, data, closing)
            if "desirable" not in example:
                pairs.append(tuple(_continuation(example, side) for side in ("chosen", "rejected")))
        return pairs


def _data_of(source: Any) -> DataConfig:
    """Field names as a `DataConfig` holds them, from a run's data section or a task."""
    if isinstance(source, DataConfig):
        return source
    return PreferenceKind().data_config(source, source.max_length or 10**9, 10**9, 0)


def preference_of(record: Record, data: DataConfig) -> Preference:
    """A checked record's preference example (`PreferenceKind.record_problem` reported any fault)."""
    with named_record(record):
        return read_preference(record.fields, data)


def _continuation(example: dict[str, list[int]], side: str) -> dict[str, list[int]]:
    """One answer of an encoded example after its prompt, labelled on its trained tokens."""
    ids = example["prompt_ids"] + example[f"{side}_ids"]
    labels = [IGNORE_INDEX] * len(example["prompt_ids"]) + example[f"{side}_labels"]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


def encoded_preference(
    record: Record, tokenizer: PreTrainedTokenizerBase, data: DataConfig, closing: str
) -> tuple[dict[str, list[int]], bool]:
    """A record's prompt and answers as token ids, and whether it was cut: `prompt_ids` (the tokens both answers
    share), then per answer `<side>_ids` and `<side>_labels` (IGNORE_INDEX on what does not train), and for an
    unpaired example `desirable` ([1] good, [0] bad). Each answer is cut to `data.max_target_length`, then the
    prompt loses its earliest tokens until prompt and the longest answer fit `data.max_length`."""
    pair = preference_of(record, data)
    whole = DataConfig(kind="chat", train_turns="last", max_length=10**9)
    sequences = {}
    with named_record(record):
        for side, answer in pair.answers:
            masked = mask_conversation(pair.prompt + answer, pair.tools, tokenizer, whole, closing)
            last = max(i for i, label in enumerate(masked.labels) if label != IGNORE_INDEX)
            sequences[side] = (masked.input_ids[: last + 1], masked.labels[: last + 1])
    shared = _shared_prefix([ids for ids, _ in sequences.values()], [labels for _, labels in sequences.values()])
    answers = {side: (ids[shared:], labels[shared:]) for side, (ids, labels) in sequences.items()}
    room = min(data.max_target_length, data.max_length - 1)
    cut = any(len(ids) > room for ids, _ in answers.values())
    answers = {side: (ids[:room], labels[:room]) for side, (ids, labels) in answers.items()}
    prompt = next(iter(sequences.values()))[0][:shared]
    keep = data.max_length - max(len(ids) for ids, _ in answers.values())
    cut = cut or len(prompt) > keep
    example = {"prompt_ids": prompt[len(prompt) - keep :] if len(prompt) > keep else prompt}
    for side, (ids, labels) in answers.items():
        example[f"{side}_ids"], example[f"{side}_labels"] = ids, labels
    if not pair.paired:
        example["desirable"] = [int(pair.chosen is not None)]
    return example, cut


def _shared_prefix(sequences: list[list[int]], labels: list[list[int]]) -> int:
    """How many leading tokens every answer's sequence shares and none trains: the prompt's tokens, computed once."""
    shared = min(len(ids) for ids in sequences)
    for position in range(shared):
        if any(row[position] != IGNORE_INDEX for row in labels) or len({ids[position] for ids in sequences}) > 1:
            return position
    return shared
