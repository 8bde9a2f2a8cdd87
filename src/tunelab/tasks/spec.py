"""A task file's schema: what a task reads, how a record becomes an instruction and an answer, and which metrics
judge it. How each kind of example does so is its kind's (`tunelab.kinds`)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.config import DataConfig
from tunelab.errors import TunelabError
from tunelab.kinds import OLD_KINDS, Kind, kind_named
from tunelab.records import DataError, Record
from tunelab.render import fill_template, template_fields


class TaskError(TunelabError, ValueError):
    """A task file or task name that cannot be used; the message says which key and what is allowed."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Short name, used on the command line and in reports."""
    description: str = ""
    kind: str
    """What the task asks for, a registered kind of example (`tunelab.kinds`): classification, generation,
    tagging, language_modeling; decides how outputs are parsed and which metrics apply."""
    source: str
    """A folder under the data root, a file or folder path, or hf:NAME[:CONFIG]."""
    split: str = "test"
    """The split evaluated: a split name, or a slice of one, `train[4500:]`, for a set that ships one split
    (Alpaca); slices of one split must not overlap across `split`, `train_split` and `validation_split`."""
    templates: list[str] = []
    """Instruction templates over record fields (at least three for built-ins); evaluation uses the first."""
    input_fields: list[str] = []
    """The fields that carry the input text: what a classifier reads, what robustness perturbs and bias swaps."""
    label_field: str = "label"
    """Classification: the field holding the gold label."""
    label_words: dict[str, list[str]] = {}
    """Classification: for each label, the words that name it in generated text; the first is the target answer."""
    scoring: Literal["generate", "loglik"] = "generate"
    """Classification on generating models: 'generate' maps the generated answer to a label by its words; 'loglik'
    (rank classification, as lm-evaluation-harness and T0 score) picks the label whose first label word is most
    likely after the prompt. `tunelab eval --scoring` overrides it."""
    reference_field: str | None = None
    """Generation: the field holding the reference (a string, or a list of acceptable references)."""
    target_field: str | None = None
    """Generation: the field holding the one answer a model is trained to give (default: `reference_field`);
    e.g. DialogSum trains on `summary` and is scored against the three `summaries`."""
    train_split: str = "train"
    """The split multi-task training draws from; a task without one can only be evaluated (`eval_only`)."""
    validation_split: str = "validation"
    """The split a multi-task run's validation loss reads, when the task has one."""
    tokens_field: str = "tokens"
    """Tagging: the field holding the word tokens."""
    tags_field: str = "tags"
    """Tagging: the field holding the IOB2 tags."""
    text_field: str | None = None
    """Language modelling: the field holding the text scored."""
    messages_field: str = "messages"
    """Chat: the field holding a conversation (OpenAI `messages`; ShareGPT `conversations` is read too)."""
    tools_field: str = "tools"
    """Chat: the field holding a conversation's tool definitions, where it has any."""
    prompt_field: str = "prompt"
    """Preference: the field holding a pair's prompt (a string or messages)."""
    chosen_field: str = "chosen"
    """Preference: the field holding a pair's preferred answer."""
    rejected_field: str = "rejected"
    """Preference: the field holding a pair's dispreferred answer."""
    unique: bool = False
    """Language modelling: score each distinct text once (e.g. a paragraph shared by many questions)."""
    metrics: list[str] = []
    """Metrics reported; the first is the task's primary metric. Default: the kind's primary metric."""
    max_new_tokens: int = Field(64, ge=1)
    """Longest generated answer."""
    num_beams: int = Field(1, ge=1)
    """Beam search width for generated answers; 1 is greedy decoding."""
    stop: list[str] = []
    """Strings that end a generated answer (cut before them)."""
    max_length: int | None = Field(None, ge=8)
    """Longest input in tokens (prompt, or a classifier's text); the model's own limit when absent. The task of a
    `data:` section keeps the run's data.max_length, so it is scored on inputs cut as in training."""

    @model_validator(mode="before")
    @classmethod
    def _read_old_kind(cls, data: Any) -> Any:
        """Read task files written before summarisation, translation and QA became generation and NER tagging:
        the old name is read as its kind now, judged by its old default metric when the file names none."""
        if not isinstance(data, dict) or data.get("kind") not in OLD_KINDS:
            return data
        kind, metric = OLD_KINDS[data["kind"]]
        print(f"note: task kind {data['kind']} is now written kind: {kind} (with metrics: [{metric}] by default)")
        return {**data, "kind": kind, "metrics": data.get("metrics") or [metric]}

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TaskSpec:
        missing = [key for key in self.handler.needs if not getattr(self, key)]
        if missing:
            raise ValueError(f"a {self.kind} task needs {', '.join(missing)}")
        if self.scoring == "loglik" and not self.handler.head_answers:
            raise ValueError(
                f"scoring loglik ranks a classification task's labels; a {self.kind} task has none: use scoring: generate"
            )
        for template in self.templates:
            template_fields(template)  # raises on a malformed placeholder
        _check_disjoint(
            {"split": self.split, "train_split": self.train_split, "validation_split": self.validation_split}
        )
        if not self.metrics:
            self.metrics = [self.handler.primary_metric]
        return self

    @property
    def handler(self) -> Kind:
        """The registered kind of example that reads, renders, parses and scores this task's records."""
        return kind_named(self.kind)

    @property
    def primary_metric(self) -> str:
        return self.metrics[0]

    def label_of(self, record: Record) -> str:
        """A record's gold label, checked against `label_words` so an unknown label is an error, never a silent miss."""
        label = str(record.fields[self.label_field])
        if label not in self.label_words:
            raise DataError(
                f"{record.where}: label {label!r} of task {self.name} is not in its label_words "
                f"({', '.join(self.label_words)}); add it to the task file"
            )
        return label

    def reference_of(self, record: Record) -> str | list[str]:
        """What a generated answer is scored against: the reference field, or the target field where a split lacks it."""
        field = (
            self.reference_field
            if self.reference_field in record.fields
            else (self.target_field or self.reference_field)
        )
        value = record.fields[field]
        if isinstance(value, dict) and "text" in value:  # SQuAD on the hub: {"text": [...], "answer_start": [...]}
            value = value["text"]
        return [str(v) for v in value] if isinstance(value, list) else str(value)

    def data_config(self, max_length: int, max_target_length: int = 128, template: int = 0) -> DataConfig:
        """The run-data settings that read this task's records: a classifier's text fields, label field and labels,
        or a generator's prompt template and answer field."""
        return self.handler.data_config(self, max_length, max_target_length, template)

    def prompt(self, record: Record, template: int = 0) -> str:
        """The instruction for a record, from one of the task's templates."""
        try:
            return fill_template(self.templates[template], record.fields)
        except ValueError as exc:
            raise DataError(f"{record.where}: task {self.name}: {exc}") from None

    def instruction(self, record: Record, template: int = 0) -> Record:
        """A record as text-to-text training sees it: the prompt of one template and the answer it is taught; what
        scoring the reference answer's likelihood reads too, so both tokenise the same text."""
        return Record({"prompt": self.prompt(record, template), "target": self.target(record)}, record.where)

    def target(self, record: Record) -> str:
        """The answer a text-to-text model should give: label word, first reference, or entity list."""
        return self.handler.target(self, record)


def split_slice(split: str) -> tuple[str, slice]:
    """A split reference's split name and rows: `test` is every row, `train[:4500]` and `train[4500:]` the rows
    of train before and from row 4500 (Python slice bounds, as in Hugging Face datasets)."""
    sliced = re.fullmatch(r"(\w+)\[(-?\d*):(-?\d*)\]", split)
    if not sliced:
        return split, slice(None)
    name, start, stop = sliced.groups()
    return name, slice(int(start) if start else None, int(stop) if stop else None)


def _check_disjoint(splits: dict[str, str]) -> None:
    """Slices of one split given to the evaluated, training and validation splits must not share rows
    (`train[:4500]` and `train[4500:]` do not): a task scored on what it trains on measures memory. Naming one
    whole split twice stays allowed (an evaluation-only task read from a `train` file); negative bounds depend on
    the file's length and are not checked."""
    spans = []
    for key, split in splits.items():
        name, rows = split_slice(split)
        if min(rows.start or 0, rows.stop or 0) >= 0:
            stop = rows.stop if rows.stop is not None else float("inf")
            spans.append((key, split, name, rows.start or 0, stop, rows != slice(None)))
    for i, (key, split, name, start, stop, sliced) in enumerate(spans):
        for other_key, other, other_name, other_start, other_stop, other_sliced in spans[i + 1 :]:
            shared = name == other_name and max(start, other_start) < min(stop, other_stop)
            if shared and (sliced or other_sliced):
                raise ValueError(f"{key} {split} and {other_key} {other} share rows; make the slices disjoint")
