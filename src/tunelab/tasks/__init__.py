"""Tasks as data: one YAML file per task says where its data lives, how a record becomes an instruction
and a target, and which metric scores it.

The built-in tasks (this folder) cover every dataset in ../shared/data. A task file is also accepted by path,
so a user adds a task without writing code. `source` is a folder under the data root (``$TUNELAB_DATA``,
by default the ``shared/data`` folder beside the checkout or the working directory), a file or folder
path, or ``hf:NAME[:CONFIG]`` for a Hugging Face dataset (e.g. ``hf:squad``, whose ``answers`` are
``{"text": [...]}``; ``hf:cnn_dailymail:3.0.0`` with ``reference_field: highlights``); hub datasets need network
access.
"""

from __future__ import annotations

import difflib
import os
import random
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunelab.config import DataConfig, RunConfig
from tunelab.data.readers import DataError, Record, read_file, read_source
from tunelab.data.validate import check_records, enforce
from tunelab.errors import TunelabError
from tunelab.render import fill_template, template_fields

TASKS_DIR = Path(__file__).resolve().parent
SUITES_DIR = TASKS_DIR / "suites"

TaskKind = Literal["classification", "generation", "summarisation", "translation", "qa", "ner", "language_modeling"]

PRIMARY_METRIC: dict[str, str] = {
    "classification": "accuracy",
    "generation": "rougeL",
    "summarisation": "rougeL",
    "translation": "bleu",
    "qa": "squad_f1",
    "ner": "entity_f1",
    "language_modeling": "perplexity",
}
"""The metric a task kind is judged by when its file names none."""


INLINE_METRICS: dict[str, list[str]] = {
    "classification": ["accuracy", "f1_macro", "precision_macro", "recall_macro"],
    "generation": ["rougeL", "rouge1", "rouge2", "exact_match"],
    "language_modeling": ["perplexity", "word_perplexity", "bits_per_byte"],
}
"""What the task of a `data:` section is scored with, the first being the primary metric."""


class TaskError(TunelabError, ValueError):
    """A task file or task name that cannot be used; the message says which key and what is allowed."""


class TaskSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    name: str
    """Short name, used on the command line and in reports."""
    description: str = ""
    kind: TaskKind
    """What the task asks for; decides how outputs are parsed and which metrics apply."""
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
    """NER: the field holding the word tokens."""
    tags_field: str = "tags"
    """NER: the field holding the IOB2 tags."""
    text_field: str | None = None
    """Language modelling: the field holding the text scored."""
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

    @model_validator(mode="after")
    def _fields_for_kind(self) -> TaskSpec:
        needs = {
            "classification": ("label_words", "input_fields"),
            "generation": ("reference_field", "templates"),
            "summarisation": ("reference_field", "input_fields", "templates"),
            "translation": ("reference_field", "input_fields", "templates"),
            "qa": ("reference_field", "input_fields", "templates"),
            "ner": ("templates",),
            "language_modeling": ("text_field",),
        }[self.kind]
        missing = [key for key in needs if not getattr(self, key)]
        if missing:
            raise ValueError(f"a {self.kind} task needs {', '.join(missing)}")
        if self.scoring == "loglik" and self.kind != "classification":
            raise ValueError(
                f"scoring loglik ranks a classification task's labels; a {self.kind} task has none: use scoring: generate"
            )
        for template in self.templates:
            template_fields(template)  # raises on a malformed placeholder
        _check_disjoint(
            {"split": self.split, "train_split": self.train_split, "validation_split": self.validation_split}
        )
        if not self.metrics:
            self.metrics = [PRIMARY_METRIC[self.kind]]
        return self

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
        if self.kind == "classification":
            pair = self.input_fields[1] if len(self.input_fields) > 1 else None
            return DataConfig(
                text_field=self.input_fields[0],
                text_pair_field=pair,
                label_field=self.label_field,
                labels=list(self.label_words),
                max_length=max_length,
            )
        return DataConfig(
            prompt_template=self.templates[template],
            response_field=self.target_field or self.reference_field,
            max_length=max_length,
            max_target_length=max_target_length,
        )

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
        if self.kind == "classification":
            return self.label_words[self.label_of(record)][0]
        if self.kind == "ner":
            return format_entities(record.fields[self.tokens_field], record.fields[self.tags_field])
        reference = record.fields[self.target_field] if self.target_field else self.reference_of(record)
        return reference[0] if isinstance(reference, list) else str(reference)


def format_entities(tokens: list[str], tags: list[str]) -> str:
    """IOB2 tags as the text a model is asked to produce: 'Nadim Ladki (PER); Japan (LOC)', or 'none'."""
    entities, current, kind = [], [], None
    for token, tag in zip(tokens, tags):
        if tag.startswith("B-") or (tag.startswith("I-") and tag[2:] != kind):
            if current:
                entities.append(f"{' '.join(current)} ({kind})")
            current, kind = [token], tag[2:]
        elif tag.startswith("I-"):
            current.append(token)
        else:
            if current:
                entities.append(f"{' '.join(current)} ({kind})")
            current, kind = [], None
    if current:
        entities.append(f"{' '.join(current)} ({kind})")
    return "; ".join(entities) or "none"


def parse_entities(text: str, tokens: list[str]) -> list[str]:
    """Generated 'span (TYPE); ...' text back to IOB2 tags over `tokens`, so seqeval can score it.

    Each span is placed at its first not-yet-tagged occurrence in the tokens; spans that do not occur,
    or lack a '(TYPE)', are ignored (they can only be wrong, and seqeval counts the missed gold entities).
    """
    tags = ["O"] * len(tokens)
    for part in text.split(";"):
        part = part.strip()
        if not part.endswith(")") or "(" not in part:
            continue
        span, _, kind = part[:-1].rpartition("(")
        words, kind = span.split(), kind.strip().upper()
        if not words or not kind:
            continue
        for start in range(len(tokens) - len(words) + 1):
            window = range(start, start + len(words))
            if tokens[start : start + len(words)] == words and all(tags[i] == "O" for i in window):
                tags[start] = f"B-{kind}"
                for i in window[1:]:
                    tags[i] = f"I-{kind}"
                break
    return tags


def data_root() -> Path:
    """Where task sources named by folder live: $TUNELAB_DATA, else a shared/data folder beside the checkout or cwd."""
    if os.environ.get("TUNELAB_DATA"):
        return Path(os.environ["TUNELAB_DATA"]).expanduser()
    candidates = [
        Path.cwd().parent / "shared" / "data",
        Path.cwd() / "shared" / "data",
        TASKS_DIR.parents[2].parent / "shared" / "data",
    ]
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _source_path(spec: TaskSpec) -> str:
    if spec.source.startswith("hf:") or Path(spec.source).expanduser().exists():
        return spec.source
    folder = data_root() / spec.source
    if not folder.exists():
        raise TaskError(
            f"task {spec.name}: data source '{spec.source}' is not a path and not a folder under the data "
            f"root {data_root()}; set TUNELAB_DATA to the folder holding it"
        )
    return str(folder)


def load_records(spec: TaskSpec, limit: int | None = None, seed: int = 0, split: str | None = None) -> list[Record]:
    """The task's evaluation records: all of the split, or `limit` of them drawn with `seed` (in file order),
    so two models evaluated with the same limit and seed see the same examples."""
    split = split or spec.split
    source = _source_path(spec)
    splits = read_source(source)
    name, rows = _split_slice(split)
    records = splits.get(name) or splits.get("data")
    if records is None:
        raise TaskError(f"task {spec.name}: {source} has no '{name}' split (it has: {', '.join(splits)})")
    records = records[rows]
    bad = next((r for r in records if r.problem), None)
    if bad:
        raise DataError(f"{bad.where}: {bad.problem}")
    if spec.unique and spec.text_field:
        seen: set[str] = set()
        records = [
            r
            for r in records
            if not (r.fields.get(spec.text_field) in seen or seen.add(r.fields.get(spec.text_field)))
        ]
    _check_fields(spec, records)
    return draw_records(records, limit, seed)


def draw_records(records: list[Record], limit: int | None, seed: int) -> list[Record]:
    """All the records, or `limit` of them drawn with `seed` and kept in file order: every command's `--limit`
    draws this way, so two models evaluated with the same limit and seed see the same examples."""
    if limit is None or limit >= len(records):
        return records
    return [records[i] for i in sorted(random.Random(seed).sample(range(len(records)), limit))]


def _split_slice(split: str) -> tuple[str, slice]:
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
        name, rows = _split_slice(split)
        if min(rows.start or 0, rows.stop or 0) >= 0:
            stop = rows.stop if rows.stop is not None else float("inf")
            spans.append((key, split, name, rows.start or 0, stop, rows != slice(None)))
    for i, (key, split, name, start, stop, sliced) in enumerate(spans):
        for other_key, other, other_name, other_start, other_stop, other_sliced in spans[i + 1 :]:
            shared = name == other_name and max(start, other_start) < min(stop, other_stop)
            if shared and (sliced or other_sliced):
                raise ValueError(f"{key} {split} and {other_key} {other} share rows; make the slices disjoint")


def _check_fields(spec: TaskSpec, records: list[Record], with_target: bool = True) -> None:
    """Every field the task reads (its answer fields only `with_target`) must be in every record: name the first
    record that lacks one."""
    needed = set(spec.input_fields)
    for template in spec.templates[:1]:
        needed.update(template_fields(template))
    needed.update(
        {
            "classification": [spec.label_field] if with_target else [],
            "ner": [spec.tokens_field] + ([spec.tags_field] if with_target else []),
            "language_modeling": [spec.text_field],
        }.get(spec.kind, [])
    )
    for record in records:
        missing = sorted(f for f in needed if f not in record.fields)
        if (
            with_target
            and spec.reference_field
            and spec.kind not in ("classification", "ner", "language_modeling")
            and not (spec.reference_field in record.fields or spec.target_field in record.fields)
        ):
            missing.append(spec.reference_field)
        if missing:
            raise DataError(
                f"{record.where}: task {spec.name} needs field(s) {', '.join(missing)}; "
                f"the record has {', '.join(record.fields)}"
            )


def read_for_task(path: str, spec: TaskSpec, with_target: bool = True) -> list[Record]:
    """A data file read as records of `spec`: every record must parse and carry the fields the task reads (and,
    `with_target`, its answer), each checked as a run's own data is, so a bad one is named by file and line."""
    return check_for_task(read_file(path), spec, path, with_target)


def check_for_task(
    records: list[Record], spec: TaskSpec, path: str, with_target: bool = True, skip_invalid: bool = False
) -> list[Record]:
    """`read_for_task` on records already read from `path`; `skip_invalid` skips (and lists) a classification or
    generation task's invalid records instead of failing."""
    if spec.kind in ("classification", "generation"):
        labels = list(spec.label_words) if spec.kind == "classification" else None
        task_type = "classification" if spec.kind == "classification" else "causal_lm"
        return enforce(
            check_records(records, task_type, spec.data_config(spec.max_length or 512), labels, with_target),
            path,
            skip_invalid,
        )
    bad = next((r for r in records if r.problem), None)
    if bad:
        raise DataError(f"{bad.where}: {bad.problem}")
    _check_fields(spec, records, with_target)
    return records


def read_yaml(path: Path, what: str) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise TaskError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(loaded, dict):
        raise TaskError(f"{path} must hold a mapping describing a {what}")
    return loaded


def find_yaml(reference: str, folder: Path, what: str) -> Path:
    path = Path(reference).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise TaskError(f"{what} file {path} does not exist")
        return path
    known = sorted(p.stem for p in folder.glob("*.yaml"))
    if reference not in known:
        guess = difflib.get_close_matches(reference, known, n=1)
        hint = f" Did you mean '{guess[0]}'?" if guess else ""
        raise TaskError(
            f"unknown {what} '{reference}'.{hint} Built-in: {', '.join(known)}; or give a path to a YAML file"
        )
    return folder / f"{reference}.yaml"


def load_task(reference: str) -> TaskSpec:
    """A built-in task by name, or a task YAML file by path."""
    path = find_yaml(reference, TASKS_DIR, "task")
    try:
        return TaskSpec.model_validate(read_yaml(path, "task"))
    except ValidationError as exc:
        problems = "\n".join(f"  - {'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())
        raise TaskError(f"{path} is not a valid task:\n{problems}") from None


def builtin_tasks() -> list[str]:
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def builtin_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.yaml"))


def data_task_name(source: str | None) -> str:
    """A `data:` section's task name, from where its training data lives: the folder of a split file
    (`.../sst2/train.jsonl` -> sst2), the file's own name otherwise, or a hub dataset's name."""
    if not source:
        return "data"
    if source.startswith("hf:"):
        return source[3:].split(":")[0].rstrip("/").split("/")[-1] or "data"
    path = Path(source)
    if path.is_dir():
        return path.name
    named_by_folder = path.stem.lower() in ("train", "training", "data") and path.parent.name not in ("", ".")
    return path.parent.name if named_by_folder else path.stem


def inline_task(config: RunConfig, labels: list[str] | None = None) -> TaskSpec:
    """The task a `data:` section describes, so that a single-task run is a mixture of one task: a classifier's
    text fields and label set, or a generator's prompt and answer fields, with the run's decoding settings."""
    data, name = config.data, data_task_name(config.data.train)
    kind = config.task_type if config.task_type in ("classification", "language_modeling") else "generation"
    common = {
        "name": name,
        "description": f"the run's data ({data.train})",
        "source": data.train or "",
        "max_length": data.max_length,
        "metrics": INLINE_METRICS[kind],
    }
    if kind == "language_modeling":  # scored on whole held-out texts (rolling windows), not on the training blocks
        return TaskSpec(kind=kind, text_field=data.text_field, input_fields=[data.text_field], **common)
    if kind == "classification":
        fields = [data.text_field] + ([data.text_pair_field] if data.text_pair_field else [])
        return TaskSpec(
            kind="classification",
            input_fields=fields,
            label_field=data.label_field,
            label_words={label: [label] for label in labels or []},
            **common,
        )
    template = data.prompt_template or "{" + data.prompt_field + "}"
    return TaskSpec(
        kind="generation",
        templates=[template],
        input_fields=template_fields(template),
        reference_field=data.response_field,
        max_new_tokens=config.eval.max_new_tokens,
        num_beams=config.eval.num_beams,
        **common,
    )
