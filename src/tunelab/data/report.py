"""The data report: what training data holds as a whole, before a model loads.

For each trained task: exact and near-duplicates, inputs with conflicting answers, the label distribution, token
lengths against the run's limits (for conversations, what of them trains; for preference data, its pairs, the
pairs whose answers are equal and the length bias), and overlap with every set the run (or `tunelab data check`)
compares it with: its validation and test splits (leakage), the other tasks it is scored on and its retention
suite (contamination). Overlap with a test split or a suite becomes a warning, which the run's card repeats: a score
measured on trained examples is worthless. `tunelab train` prints the report and saves it as
`<run>/data/report.json` and `report.md`.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from tunelab.config import DataConfig, RunConfig
from tunelab.data.cleaning import Removed, removal_notes
from tunelab.data.conversations import conversation_warnings, summary_lines
from tunelab.data.lengths import token_lengths
from tunelab.data.preferences import preference_lines, preference_warnings
from tunelab.data.quality import (
    NEAR_THRESHOLD,
    PERMUTATIONS,
    SHINGLE_CHARS,
    Example,
    Fields,
    Sketched,
    conflicts,
    exact_duplicates,
    examples_of,
    label_counts,
    label_findings,
    near_duplicates,
    overlap,
    run_fields,
    suite_examples,
    task_examples,
    task_fields,
)
from tunelab.data.taskset import TaskSet, TrainingTask, instruction_data
from tunelab.kinds import kind_named, kind_of_run
from tunelab.kinds.base import Family
from tunelab.records import Record

SHOWN = 5
"""Examples shown per finding; the counts are always complete."""
WARNED_KINDS = ("test", "suite", "file")
"""Sets whose overlap with training data makes a score measured on them unreliable (a file given to compare with
is one a model is to be scored on)."""


@dataclass
class Reference:
    """A set training data is compared with."""

    kind: str
    """'validation' or 'test' (a split the run scores), 'suite' (a suite task's evaluated split) or 'file'."""
    examples: list[Example]
    same_task: bool = False
    """Records of the same task (the run's own splits, a file compared with): a training label they never have is
    reported."""


def _groups(groups: list[list[int]], examples: list[Example]) -> dict:
    return {
        "groups": len(groups),
        "extra": sum(len(group) - 1 for group in groups),
        "examples": [[examples[i].where for i in group[:SHOWN]] for group in groups[:SHOWN]],
    }


def _near(data: Sketched) -> dict:
    """Near-duplicate groups, those with differing inputs shown first (exact copies are also in the exact count)."""
    groups = near_duplicates(data)
    shown = sorted(groups, key=lambda group: len({data.examples[i].text for i in group}) == 1)
    return {
        "threshold": data.threshold,
        **_groups(groups, data.examples),
        "examples": _groups(shown, data.examples)["examples"],
    }


def _conflicts(examples: list[Example]) -> dict:
    groups = conflicts(examples)
    return {
        "inputs": len(groups),
        "records": sum(map(len, groups)),
        "examples": [
            [f"{examples[i].where} ({examples[i].answer[:40]})" for i in group[:SHOWN]] for group in groups[:SHOWN]
        ],
    }


def _overlap(train: Sketched, reference: Reference) -> dict:
    other = Sketched(reference.examples, train.threshold)
    matches = overlap(train, other)
    exact = sum(train.examples[m.index].text == other.examples[m.other].text for m in matches)
    return {
        "kind": reference.kind,
        "records": len(reference.examples),
        "overlapping": len(matches),
        "exact": exact,
        "near": len(matches) - exact,
        "records_hit": len({m.other for m in matches}),
        "examples": [
            {
                "train": train.examples[m.index].where,
                "other": other.examples[m.other].where,
                "similarity": round(m.similarity, 3),
            }
            for m in matches[:SHOWN]
        ],
    }


def _labels(
    records: list[Record], label_field: str, references: dict[str, Reference], pinned: list[str] | None
) -> dict:
    counts = label_counts(records, label_field)
    elsewhere = {name: {e.answer for e in ref.examples} for name, ref in references.items() if ref.same_task}
    return {
        "counts": counts,
        "imbalance": max(counts.values()) / min(counts.values()),
        "pinned": pinned,
        **label_findings(counts, elsewhere, pinned),
    }


def task_report(
    records: list[Record],
    fields: Fields,
    references: dict[str, Reference],
    label_field: str | None = None,
    lengths: dict | None = None,
    pinned: list[str] | None = None,
    held_out_lengths: dict[str, dict | None] | None = None,
) -> dict:
    """The findings on one task's training records: duplicates, conflicts, labels (when `label_field` is given;
    `pinned` is the configured label set), `lengths` as measured (and `held_out_lengths`, the run's validation and
    test splits'), and overlap with each non-empty reference set."""
    train = Sketched(examples_of(records, fields))
    return {
        "records": len(records),
        "exact_duplicates": _groups(exact_duplicates(train.examples), train.examples),
        "near_duplicates": _near(train),
        "conflicts": _conflicts(train.examples),
        "labels": _labels(records, label_field, references, pinned) if label_field and records else None,
        "lengths": lengths,
        "held_out_lengths": held_out_lengths or {},
        "overlap": {name: _overlap(train, ref) for name, ref in references.items() if ref.examples},
    }


def _quoted(labels: list[str]) -> str:
    return ", ".join(f"'{label}'" for label in labels)


def label_warnings(task: str, labels: dict) -> list[str]:
    """One line per likely label mistake (none for a task without labels), each saying what it does to the
    classifier; while the label set is inferred, the advice to pin it (`data.labels`, after which an unknown label
    is an error naming file:line)."""
    if not labels:
        return []
    counts = labels["counts"]
    lines = [
        f"{task}: labels {_quoted(group)} differ only in case or spacing; each is a class of its own"
        for group in labels["variants"]
    ]
    lines += [f"{task}: label '{label}' has only {counts[label]} training record(s)" for label in labels["rare"]]
    lines += [
        f"{task}: label(s) {_quoted(absent)} never appear in {name}; that class is not validated or scored there"
        for name, absent in labels["absent"].items()
    ]
    if labels["unused"]:
        lines.append(f"{task}: data.labels lists {_quoted(labels['unused'])}, which no training record has")
    if lines and labels["pinned"] is None:
        odd = {label for group in labels["variants"] for label in group[1:]} | set(labels["rare"])
        keep = sorted(label for label in counts if label not in odd)
        lines[-1] += (
            f"; pin the label set, e.g. data.labels='[{', '.join(keep)}]', so a record with any other label is an "
            "error naming its file and line"
        )
    return lines


def _summary_warnings(tasks: dict[str, dict]) -> list[str]:
    """What in a run's training conversations will not train as meant (`tunelab.data.conversations`), and the
    preference pairs of any split that carry no preference (`tunelab.data.preferences`): a trained one teaches
    nothing, a held-out one measures nothing."""
    lines = []
    for task, found in tasks.items():
        lengths = found["lengths"] or {}
        if "conversations" in lengths:
            lines += conversation_warnings(task, lengths["conversations"])
        held_out = [(f"{task} ({split})", held) for split, held in found.get("held_out_lengths", {}).items() if held]
        for named, measured in [(task, lengths), *held_out]:
            if "preferences" in measured:
                lines += preference_warnings(named, measured["preferences"])
    return lines


def warnings_of(tasks: dict[str, dict]) -> list[str]:
    """One line per test split or suite task that training records overlap."""
    lines = []
    for task, found in tasks.items():
        for name, hit in found["overlap"].items():
            if hit["kind"] in WARNED_KINDS and hit["overlapping"]:
                lines.append(
                    f"{task}: {hit['overlapping']} training record(s) ({hit['exact']} exact, {hit['near']} near) "
                    f"overlap {hit['records_hit']} of the {hit['records']} records of {name}; scores there are "
                    "measured partly on trained examples"
                )
    return lines


def cleaning_summary(kept: int, removed: list[Removed]) -> dict:
    """What cleaning left and removed, one note per reason (the records themselves go to removed.jsonl)."""
    return {"kept": kept, "removed": len(removed), "notes": removal_notes(removed)}


def assemble(tasks: dict[str, dict], cleaning: dict | None = None) -> dict:
    """The report as saved: how inputs were compared, each task's findings, the warnings, what cleaning removed."""
    return {
        "method": {
            "normalisation": "Unicode NFKC, case folded, whitespace collapsed",
            "near_duplicates": f"MinHash ({PERMUTATIONS} permutations) of character {SHINGLE_CHARS}-grams; LSH "
            f"candidates kept at estimated Jaccard >= {NEAR_THRESHOLD}",
        },
        "tasks": tasks,
        "warnings": [line for task, found in tasks.items() for line in label_warnings(task, found["labels"])]
        + _summary_warnings(tasks)
        + warnings_of(tasks),
        "contamination": warnings_of(tasks),
        "cleaning": cleaning,
    }


def _suite_references(reference: str | None) -> dict[str, Reference]:
    return {name: Reference("suite", found) for name, found in suite_examples(reference).items()} if reference else {}


def _lengths(
    config: RunConfig, family: Family, by_head: bool, task: TrainingTask, tokenizer: PreTrainedTokenizerBase
) -> dict | None:
    """A task's lengths as its run tokenises them: a `data:` run's records, a multi-head task's text, or a
    text-to-text mixture task's instructions (first template)."""
    data = config.data
    if config.mixture is None:
        return token_lengths(data.kind, family, task.train, tokenizer, data)
    if by_head:  # one head per task over a shared encoder
        return token_lengths(
            "classification", "encoder", task.train, tokenizer, task.spec.data_config(data.max_length)
        )
    instructions = [task.spec.instruction(record) for record in task.train]
    return token_lengths("generation", family, instructions, tokenizer, instruction_data(config))


def _held_out_lengths(
    config: RunConfig, family: Family, task: TrainingTask, tokenizer: PreTrainedTokenizerBase | None
) -> dict[str, dict | None]:
    """A `data:` run's validation and test splits measured as its training split is (a mixture's tasks are scored
    through their instructions, which `_lengths` measures for training only)."""
    if config.mixture is not None or tokenizer is None:
        return {}
    return {
        split: token_lengths(config.data.kind, family, records, tokenizer, config.data)
        for split, records in (("validation", task.validation), ("test", task.test))
    }


def run_report(
    config: RunConfig,
    family: Family,
    by_head: bool,
    tasks: TaskSet,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> dict:
    """The report on every trained task of a run, compared with its own validation and test splits, the other tasks
    it is scored on, and its retention suite; token lengths when a tokenizer is given, as the run's model reads
    them: data/ sits below models/ and train/, so the caller passes the model's `family` and whether the run's
    objective answers `by_head`."""
    suite = _suite_references(config.eval.retention_suite)
    scored = {name: task_examples(spec, records) for name, (spec, records, _) in tasks.scored().items()}
    found = {}
    for name, task in tasks.trained.items():
        fields = run_fields(config.data) if config.mixture is None else task_fields(task.spec)
        references = {
            "validation": Reference("validation", examples_of(task.validation, fields), same_task=True),
            "test": Reference("test", examples_of(task.test, fields), same_task=True),
            **{f"task {other}": Reference("test", records) for other, records in scored.items() if other != name},
            **suite,
        }
        classifies = (kind_of_run(config) if config.mixture is None else task.spec.handler).head_answers
        lengths = _lengths(config, family, by_head, task, tokenizer) if tokenizer is not None else None
        pinned = config.data.labels if config.mixture is None else list(task.spec.label_words)
        answer = fields.answer if classifies else None
        held_out = _held_out_lengths(config, family, task, tokenizer)
        found[name] = task_report(
            task.train, fields, references, answer, lengths, pinned if classifies else None, held_out
        )
    if config.mixture is None and (config.data.dedup != "off" or config.data.drop_overlap):
        (task,) = tasks.trained.values()
        return assemble(found, cleaning_summary(len(task.train), tasks.removed))
    return assemble(found)


def file_references(against: dict[str, list[Record]], suites: list[str], fields: Fields) -> dict[str, Reference]:
    """The sets a data file is compared with: other files (by path) and each task of each suite."""
    references = {
        name: Reference("file", examples_of(others, fields), same_task=True) for name, others in against.items()
    }
    for suite in suites:
        references.update(_suite_references(suite))
    return references


def file_report(
    path: str,
    records: list[Record],
    family: Family,
    data: DataConfig,
    references: dict[str, Reference],
    tokenizer: PreTrainedTokenizerBase | None = None,
    cleaning: dict | None = None,
) -> dict:
    """The report on one data file (`tunelab data check` / `data clean`) of `data.kind` examples, compared with
    `references`; token lengths as a model of `family` reads them."""
    fields = run_fields(data)
    lengths = token_lengths(data.kind, family, records, tokenizer, data) if tokenizer is not None else None
    label_field = fields.answer if kind_named(data.kind).head_answers else None
    found = task_report(records, fields, references, label_field, lengths, data.labels)
    return assemble({path: found}, cleaning)


def _summary(length: dict) -> str:
    return f"min {length['min']}, median {length['median']}, p95 {length['p95']}, max {length['max']} (limit {length['limit']}: {length['over']} over)"


def _lengths_lines(lengths: dict | None, split: str = "") -> list[str]:
    """The token lengths of a split (`split`: its name, none for the training records), and what of its
    conversations trains."""
    named = f"{split} " if split else ""
    if lengths is None:
        return [f"- {named}token lengths: not measured"]
    line = f"- {named}token lengths: {_summary(lengths['input'])}"
    if lengths.get("answer"):
        line += f"; answers {_summary(lengths['answer'])}"
    truncated = lengths["truncated"]
    line += (
        "; packed into blocks, nothing truncated"
        if truncated is None
        else f"; {truncated} example(s) will be truncated"
    )
    indent = "  " if split else ""
    if "conversations" in lengths:
        return [line, *(indent + entry for entry in summary_lines(lengths["conversations"]))]
    if "preferences" in lengths:
        return [line, *(indent + entry for entry in preference_lines(lengths["preferences"]))]
    return [line]


def _task_lines(name: str, found: dict) -> list[str]:
    exact, near, conflicting = found["exact_duplicates"], found["near_duplicates"], found["conflicts"]
    lines = [
        f"## {name} ({found['records']} training records)",
        "",
        f"- exact duplicates: {exact['groups']} group(s), {exact['extra']} extra record(s)"
        + "".join(f"\n  - {' = '.join(group)}" for group in exact["examples"]),
        f"- near-duplicates (exact copies included): {near['groups']} group(s), {near['extra']} extra record(s)"
        + "".join(f"\n  - {' ~ '.join(group)}" for group in near["examples"]),
        f"- conflicting answers: {conflicting['inputs']} input(s) over {conflicting['records']} record(s)"
        + "".join(f"\n  - {' / '.join(group)}" for group in conflicting["examples"]),
    ]
    if found["labels"]:
        counts, total = found["labels"]["counts"], found["records"]
        shares = ", ".join(f"{label} {count} ({100 * count / total:.1f}%)" for label, count in counts.items())
        lines.append(f"- labels: {shares}; majority/minority {found['labels']['imbalance']:.2f}")
    lines += _lengths_lines(found["lengths"])
    for split, lengths in found.get("held_out_lengths", {}).items():
        if lengths is not None:
            lines += _lengths_lines(lengths, split)
    if found["overlap"]:
        lines += [
            "",
            "| overlap with | kind | its records | training records overlapping | exact | near | its records hit | e.g. |",
        ]
        lines.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for other, hit in found["overlap"].items():
            shown = "; ".join(f"{e['train']} ~ {e['other']} ({e['similarity']:.2f})" for e in hit["examples"][:2])
            lines.append(
                f"| {other} | {hit['kind']} | {hit['records']} | {hit['overlapping']} | {hit['exact']} | {hit['near']} "
                f"| {hit['records_hit']} | {shown} |"
            )
    return lines + [""]


def render_report(report: dict) -> str:
    """The report as Markdown, for the terminal and `report.md`."""
    method = report["method"]
    lines = [
        "# Data report",
        "",
        f"Inputs compared after normalisation ({method['normalisation']}); near-duplicates: {method['near_duplicates']}.",
        "",
    ]
    for name, found in report["tasks"].items():
        lines += _task_lines(name, found)
    if report["cleaning"]:
        cleaning = report["cleaning"]
        lines += [f"Cleaning kept {cleaning['kept']} record(s) and removed {cleaning['removed']}:"]
        lines += [f"- {note}" for note in cleaning["notes"]] + [""]
    lines += [f"**Warning:** {warning}" for warning in report["warnings"]]
    lines += [] if report.get("contamination") else ["No overlap with any test split or suite."]
    return "\n".join(lines) + "\n"
