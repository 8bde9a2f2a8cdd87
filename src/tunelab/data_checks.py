"""Data checks: the data report a run prints and saves, `tunelab data check` and `tunelab data clean`.

Below training and evaluation: checking a file needs its records, the run's kind of example and, for token
lengths, the model's tokenizer, never the model.
"""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig
from tunelab.data.cleaning import clean
from tunelab.data.conversations import Counted, count_conversations, mask_views
from tunelab.data.quality import run_fields
from tunelab.data.readers import read_file
from tunelab.data.report import cleaning_summary, file_references, file_report, render_report, run_report
from tunelab.data.splits import label_set
from tunelab.data.taskset import TaskSet, load_taskset
from tunelab.data.validate import check_records, enforce
from tunelab.errors import TunelabError
from tunelab.kinds import answers_by_head, kind_of_run
from tunelab.kinds.chat import nothing_trains
from tunelab.models.family import model_family
from tunelab.models.loading import config_tokenizer
from tunelab.records import DataError, Record
from tunelab.runs import RunDir, write_atomic, write_json, write_jsonl

MASKS_PRINTED = 2
"""Training conversations whose mask view the start of `tunelab train` prints: enough to see what trains."""
MASKS_SAVED = 3
"""Training conversations whose mask view a run saves (`data/masks.md`), which its card and run page show."""


def data_report(config: RunConfig, tasks: TaskSet, tokenizer) -> dict:
    """The data report on what the run trains (duplicates, conflicts, labels, token lengths with the run's
    tokenizer, leakage and contamination), printed before any model loads, with the mask view of its first
    conversations; DataError naming the conversations that would train no token."""
    report = run_report(config, model_family(config.model), answers_by_head(config), tasks, tokenizer)
    print(render_report(report))
    for found in report["tasks"].values():
        untrained = (found["lengths"] or {}).get("conversations", {}).get("untrained")
        if untrained:
            raise nothing_trains(untrained, config.data)
    shown = training_conversations(config, tasks, tokenizer, MASKS_PRINTED)
    if shown:
        print(mask_views(shown))
    return report


def training_conversations(config: RunConfig, tasks: TaskSet, tokenizer, count: int) -> list[Counted]:
    """The first `count` training conversations of a `data:` run of a conversational kind, as they will train;
    none for any other run."""
    if config.mixture is not None or not kind_of_run(config).conversational:
        return []
    (task,) = tasks.trained.values()
    return count_conversations(task.train[:count], tokenizer, config.data)


def save_data_report(run: RunDir, config: RunConfig, report: dict, tasks: TaskSet, tokenizer) -> None:
    """`data/report.json` and `report.md`; when cleaning is on, `data/removed.jsonl`: every training record
    removed, with why (empty when nothing was); for conversations, `data/masks.md`: the first ones with the tokens
    that train marked (the card and the run page show it)."""
    write_json(run.data_dir / "report.json", report)
    write_atomic(run.data_dir / "report.md", render_report(report))
    if report["cleaning"] is not None:
        write_jsonl(run.data_dir / "removed.jsonl", [removed.as_dict() for removed in tasks.removed])
    shown = training_conversations(config, tasks, tokenizer, MASKS_SAVED)
    if shown:
        write_atomic(run.masks_path, mask_views(shown))


def run_data_report(config: RunConfig) -> tuple[dict, TaskSet]:
    """`tunelab data check CONFIG`: the report a run of CONFIG prints before training, its data read, split and
    cleaned as the run reads it and compared with its own validation and test splits and retention suite, and
    each split's token lengths (and, for conversations, what of them trains); no model loads."""
    tasks = load_taskset(config)
    report = run_report(config, model_family(config.model), answers_by_head(config), tasks, _lengths_tokenizer(config))
    return report, tasks


def show_masks(config: RunConfig, records: list[Record], count: int) -> str:
    """`--show-masks N`: the first `count` conversations of `records` with the tokens that train marked, as the run
    of `config` trains them (its tokenizer and chat template, data.max_length, data.train_roles, ...)."""
    if not kind_of_run(config).conversational:
        raise DataError(
            f"--show-masks marks the trained tokens of conversations; data.kind {config.data.kind} trains whole "
            "answers (use data.kind: chat)"
        )
    return mask_views(count_conversations(records[:count], config_tokenizer(config), config.data))


def read_checked(
    config: RunConfig, path: str, labels: list[str] | None = None
) -> tuple[list[Record], list[str] | None]:
    """A data file's records as a run reads its data, with the label set (given, configured or inferred): invalid
    records fail with file, line and field, or are skipped and listed under `data.skip_invalid`."""
    records = read_file(path)
    if kind_of_run(config).head_answers and labels is None:
        labels = label_set(records, config, path)
    return enforce(
        check_records(records, kind_of_run(config), config.data, labels), path, config.data.skip_invalid
    ), labels


def _file_references(config: RunConfig, labels: list[str] | None, against: list[str], suites: list[str]) -> dict:
    others = {other: read_checked(config, other, labels)[0] for other in against}
    return file_references(others, suites, run_fields(config.data))


def _lengths_tokenizer(config: RunConfig):
    """The config's model's tokenizer, or None (token lengths then go unmeasured, and the report says so) when it
    cannot be loaded here: checking a file's records must not need its model."""
    try:
        return config_tokenizer(config)
    except (TunelabError, OSError) as exc:
        print(f"token lengths not measured: the tokenizer of {config.model.name} cannot be loaded ({exc})")
        return None


def report_data_file(
    config: RunConfig,
    path: str,
    records: list[Record],
    labels: list[str] | None,
    against: list[str],
    suites: list[str],
) -> dict:
    """`tunelab data check`'s report on a file's valid records, compared with the files `against` and `suites`."""
    references = _file_references(config, labels, against, suites)
    return file_report(path, records, model_family(config.model), config.data, references, _lengths_tokenizer(config))


def clean_data_file(
    config: RunConfig, path: str, output: Path, dedup: str, against: list[str], suites: list[str]
) -> tuple[dict, dict[str, Path]]:
    """Write a cleaned copy of a data file (its records as read, as JSON Lines, without the duplicates `dedup` names
    and the records that overlap `against` files or `suites`), its report and the removed records (with why),
    each atomically; returns the report and the paths written. The input is never overwritten."""
    if output.suffix != ".jsonl":
        raise DataError(f"--output {output}: the cleaned copy is written as JSON Lines; give a .jsonl path")
    for given in (path, *against):
        if output.resolve() == Path(given).resolve():
            raise DataError(f"--output {output} is an input ({given}); write the cleaned copy to a new file")
    records, labels = read_checked(config, path)
    references = _file_references(config, labels, against, suites)
    cleaned = clean(records, run_fields(config.data), dedup, {n: r.examples for n, r in references.items()})
    summary = cleaning_summary(len(cleaned.kept), cleaned.removed)
    report = file_report(
        path, records, model_family(config.model), config.data, references, _lengths_tokenizer(config), summary
    )
    stem = output.with_suffix("")
    written = {
        "cleaned": output,
        "report": stem.with_name(f"{stem.name}.report.json"),
        "removed": stem.with_name(f"{stem.name}.removed.jsonl"),
    }
    write_jsonl(written["removed"], [removed.as_dict() for removed in cleaned.removed])
    write_json(written["report"], report)
    write_atomic(written["report"].with_suffix(".md"), render_report(report))
    write_jsonl(output, [record.fields for record in cleaned.kept])
    return report, written
