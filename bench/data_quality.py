"""What the data checks find in the shared datasets, and how long they take.

    python bench/data_quality.py

1. SST-2: duplicates, near-duplicates and conflicting labels within train; train vs validation and test.
2. DialogSum: the same within each split (input: the dialogue, answer: the summary); train vs validation vs test.
3. The built-in tasks: each task's training split against every task's evaluated split (its own included), by the
   tasks' input fields, as a run's contamination check compares them; and tasks built on one source, compared on
   the fields both read.

Reads ../shared/data in place ($TUNELAB_DATA to point elsewhere). Prints the figures and the seconds each part took.
"""

from __future__ import annotations

import time

from tunelab.data.quality import Fields, Sketched, examples_of, overlap, task_examples
from tunelab.data.readers import read_file
from tunelab.data.report import Reference, task_report
from tunelab.data.task_records import load_records
from tunelab.render import template_fields
from tunelab.tasks import TaskError, builtin_tasks, data_root, load_task


def _findings(name: str, found: dict) -> None:
    exact, near, conflicting = found["exact_duplicates"], found["near_duplicates"], found["conflicts"]
    print(
        f"  {name}: {found['records']} records; exact duplicates {exact['groups']} groups / {exact['extra']} extra; "
        f"near (incl. exact) {near['groups']} groups / {near['extra']} extra; conflicting answers "
        f"{conflicting['inputs']} inputs / {conflicting['records']} records"
    )
    for other, hit in found["overlap"].items():
        print(
            f"    vs {other} ({hit['records']}): {hit['overlapping']} records overlap ({hit['exact']} exact, "
            f"{hit['near']} near), hitting {hit['records_hit']} of its records"
        )


def splits_report(dataset: str, fields: Fields, label: bool) -> None:
    """Each split's own findings and its overlap with the splits after it (train vs validation vs test)."""
    started = time.perf_counter()
    order = ["train", "validation", "test"]
    records = {split: read_file(data_root() / dataset / f"{split}.jsonl") for split in order}
    examples = {split: examples_of(found, fields) for split, found in records.items()}
    for i, split in enumerate(order):
        references = {other: Reference(other, examples[other]) for other in order[i + 1 :]}
        found = task_report(records[split], fields, references, fields.answer if label else None)
        _findings(f"{dataset}/{split}", found)
        if found["labels"]:
            print(f"    labels {found['labels']['counts']}, majority/minority {found['labels']['imbalance']:.2f}")
    print(f"  ({time.perf_counter() - started:.1f} s)")


def task_overlaps() -> None:
    """Every task's training split (where it has one) against every task's evaluated split."""
    started = time.perf_counter()
    specs = {name: load_task(name) for name in builtin_tasks()}
    evaluated = {name: Sketched(task_examples(spec, load_records(spec))) for name, spec in specs.items()}
    trained = {}
    for name, spec in specs.items():
        if spec.kind == "language_modeling":
            continue  # scored only (perplexity), never a training set
        try:
            trained[name] = Sketched(task_examples(spec, load_records(spec, split=spec.train_split)))
        except TaskError:
            print(f"  {name}: no training split ({spec.train_split}); evaluated only")
    print(f"  sets read in {time.perf_counter() - started:.1f} s")
    for name, train in trained.items():
        hits = []
        for other, scored in evaluated.items():
            matches = overlap(train, scored)
            if matches:
                exact = sum(train.examples[m.index].text == scored.examples[m.other].text for m in matches)
                hits.append(f"{other} {len(matches)} ({exact} exact, {len(matches) - exact} near)")
        print(f"  {name} train ({len(train.examples)}): " + ("; ".join(hits) or "no overlap with any evaluated split"))
    print(f"  ({time.perf_counter() - started:.1f} s)")


def _read_fields(spec) -> set[str]:
    """Every field a task reads: its input fields, its first template's and its scored text."""
    return {*spec.input_fields, *(template_fields(spec.templates[0]) if spec.templates else []), spec.text_field} - {
        None
    }


def shared_sources() -> None:
    """Evaluated splits of tasks built on one source (wiki_paragraphs' passages are squad_mini's contexts, by
    design), compared on the fields both read: what input-field comparison alone does not see."""
    specs = [load_task(name) for name in builtin_tasks()]
    for i, spec in enumerate(specs):
        for other in specs[i + 1 :]:
            common = tuple(sorted(_read_fields(spec) & _read_fields(other)))
            if spec.source != other.source or not common:
                continue
            fields = Fields(common, None)
            mine, theirs = (Sketched(examples_of(load_records(s), fields)) for s in (spec, other))
            matches = overlap(mine, theirs)
            print(
                f"  {spec.name} ({len(mine.examples)} records, {len(mine.texts)} distinct) vs {other.name} "
                f"({len(theirs.examples)} records, {len(theirs.texts)} distinct) on {', '.join(common)}: "
                f"{len(matches)} of {spec.name}'s records overlap"
            )


def main() -> None:
    started = time.perf_counter()
    print("SST-2 (input: text, answer: label)")
    splits_report("sst2", Fields(("text",), "label"), label=True)
    print("DialogSum (input: dialogue, answer: summary)")
    splits_report("dialogsum", Fields(("dialogue",), "summary"), label=False)
    print("Built-in tasks: training split vs every evaluated split (input fields)")
    task_overlaps()
    print("Built-in tasks on one source: evaluated splits compared on the fields both read")
    shared_sources()
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
