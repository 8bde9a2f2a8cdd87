"""Classification: a record's text (or text pair) is given one of a fixed set of labels.

A classifier answers through a trained head; a generating model answers with a label's words (matched back to the
label by `match_label`) or by the label whose words it finds most likely (rank classification).
"""

from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING, Any

from tunelab.config import DataConfig
from tunelab.kinds.base import Family, Kind
from tunelab.kinds.encoding import Encoded
from tunelab.records import Record

if TYPE_CHECKING:  # the registry loads for `tunelab --help`, which must not import transformers
    from transformers import PreTrainedTokenizerBase


class Classification(Kind):
    name = "classification"
    objective = "classifier"
    needs = ("label_words", "input_fields")
    primary_metric = "accuracy"
    inline_metrics = ("accuracy", "f1_macro", "precision_macro", "recall_macro")
    head_answers = True
    answer_key = "label"
    families = ("encoder",)  # a classifier is a head on an encoder

    def record_fields(self, spec: Any, with_target: bool) -> list[str]:
        return [spec.label_field] if with_target else []

    def target(self, spec: Any, record: Record) -> str:
        return spec.label_words[spec.label_of(record)][0]

    def references(self, spec: Any, records: list[Record]) -> list:
        return [spec.label_of(r) for r in records]

    def parse(self, spec: Any, outputs: list[str], records: list[Record]) -> list:
        return [match_label(o, spec.label_words) for o in outputs]

    def learning_rate(self, rates: Any) -> float:
        return rates.with_head

    def data_config(self, spec: Any, max_length: int, max_target_length: int, template: int) -> DataConfig:
        pair = spec.input_fields[1] if len(spec.input_fields) > 1 else None
        return DataConfig(
            kind=self.name,
            text_field=spec.input_fields[0],
            text_pair_field=pair,
            label_field=spec.label_field,
            labels=list(spec.label_words),
            max_length=max_length,
        )

    def run_fields(self, data: DataConfig, with_target: bool) -> list[str]:
        needed = [data.text_field] + ([data.text_pair_field] if data.text_pair_field else [])
        return needed + ([data.label_field] if with_target else [])

    def inline_fields(self, config: Any, labels: list[str] | None) -> dict[str, Any]:
        data = config.data
        return {
            "input_fields": [data.text_field] + ([data.text_pair_field] if data.text_pair_field else []),
            "label_field": data.label_field,
            "label_words": {label: [label] for label in labels or []},
        }

    def answer_field(self, data: DataConfig) -> str | None:
        return data.label_field

    def task_answer_field(self, spec: Any) -> str | None:
        return spec.label_field

    def encode(
        self,
        records: list[Record],
        tokenizer: PreTrainedTokenizerBase,
        data: DataConfig,
        family: Family,
        labels: list[str] | None,
        with_target: bool,
    ) -> Encoded:
        """input_ids/attention_mask (+ label id when `labels` is given and `with_target`) for an encoder
        classifier."""
        labels = labels if with_target else None
        texts = [str(r.fields[data.text_field]) for r in records]
        pairs = [str(r.fields[data.text_pair_field]) for r in records] if data.text_pair_field else None
        full = tokenizer(texts, pairs)["input_ids"]
        truncated = sum(len(ids) > data.max_length for ids in full)
        encoded = tokenizer(texts, pairs, truncation=True, max_length=data.max_length)
        examples = []
        for i, record in enumerate(records):
            example = {"input_ids": encoded["input_ids"][i], "attention_mask": encoded["attention_mask"][i]}
            if "token_type_ids" in encoded:
                example["token_type_ids"] = encoded["token_type_ids"][i]
            if labels is not None:
                example["labels"] = labels.index(str(record.fields[data.label_field]))
            examples.append(example)
        return Encoded(examples, truncated)

    def collator(self, tokenizer: PreTrainedTokenizerBase, family: Family):
        from transformers import DataCollatorWithPadding

        return DataCollatorWithPadding(tokenizer)


def _normalise_text(text: str) -> str:
    """Lower case, single spaces, no punctuation or space around the ends: "  Positive!" -> "positive"."""
    return " ".join(text.lower().split()).strip(string.punctuation + " ")


def _whole_word(word: str) -> re.Pattern[str]:
    """A pattern for `word` not glued to letters or digits on either side."""
    return re.compile(rf"(?<!\w){re.escape(word)}(?!\w)")


def match_label(text: str, label_words: dict[str, list[str]]) -> str | None:
    """The label a generated text names, or None when it names none or is ambiguous.

    A label word at the start wins (the model answered); otherwise a label
    word anywhere counts if only one label is mentioned. Longer words are tried
    first and their matches blanked out, so "not entailment" is never also read
    as "entailment".
    """
    normalised = _normalise_text(text)
    words = sorted(
        ((_normalise_text(w), label) for label, ws in label_words.items() for w in ws),
        key=lambda pair: len(pair[0]),
        reverse=True,
    )
    for word, label in words:
        if word and _whole_word(word).match(normalised):
            return label
    mentioned = set()
    for word, label in words:
        if word and _whole_word(word).search(normalised):
            mentioned.add(label)
            normalised = _whole_word(word).sub(" ", normalised)
    return mentioned.pop() if len(mentioned) == 1 else None
