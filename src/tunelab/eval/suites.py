"""Running a benchmark suite (`tunelab.tasks.suite`: a YAML list of tasks with example limits) against one target.

`tunelab eval TARGET --suite glue-mini` writes `<suite>.json` (every metric with its bootstrap 95%
interval), `<suite>.md` (the table) and `<suite>.outputs.jsonl` (each answer beside its reference); with
`--shots K` or `--scoring S` the name says so (`glue-mini-5shot-loglik.json`), so protocols never overwrite each
other's reports, and every task says how it was scored and with how many demonstrations. The suite average is
GLUE-style: the mean of each scored task's primary metric (perplexity, which is not on a 0-100 scale, is left
out of it).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tunelab.data.task_records import suite_tasks
from tunelab.eval.bootstrap import format_interval
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import TaskResult, run_task
from tunelab.eval.targets import Target
from tunelab.runs import write_atomic, write_json
from tunelab.tasks import TaskSpec
from tunelab.tasks.suite import Suite


def average(results: dict[str, TaskResult], specs: dict[str, TaskSpec]) -> dict | None:
    """GLUE-style average of the primary metrics on the 0-100 scale."""
    values = {
        name: r.scores[specs[name].primary_metric].value
        for name, r in results.items()
        if specs[name].primary_metric in r.scores and get_metric(specs[name].primary_metric).higher_is_better
    }
    if not values:
        return None
    return {"value": sum(values.values()) / len(values), "over": {name: specs[name].primary_metric for name in values}}


def build_report(
    name: str,
    target: str,
    results: dict[str, TaskResult],
    seed: int,
    samples: int,
    average_of: dict | None = None,
    data: Path | None = None,
) -> dict:
    """The report of a suite (or of one data file, as a suite of one task, with the file's absolute path as
    `data`), as written to `<name>.json`."""
    return {
        "suite": name,
        "target": target,
        **({"data": str(data)} if data else {}),
        "seed": seed,
        "bootstrap_samples": samples,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": {task: result.as_dict() for task, result in results.items()},
        "average": average_of,
    }


def report_name(name: str, shots: int = 0, scoring: str | None = None) -> str:
    """A report's name and file stem: the suite's (or data file's), marked with the protocol when it is not the
    default (zero-shot, each task's own scoring)."""
    return name + (f"-{shots}shot" if shots else "") + (f"-{scoring}" if scoring else "")


def data_report_name(directory: Path, data: Path, shots: int = 0, scoring: str | None = None) -> str:
    """The stem of a data file's report in `directory`: `data-<file stem>` (with the protocol, `report_name`), or,
    when the report of that name scored another file of the same name, `data-<file stem>-<8 hex digits of the
    SHA-256 of the file's absolute path>`. So `--data a/test.jsonl` and `--data b/test.jsonl` never overwrite each
    other, and each file keeps its report's name at every later eval. A report that names no file (written before
    reports recorded it) is taken to be this file's."""
    data = data.resolve()
    name = report_name(f"data-{data.stem}", shots, scoring)
    existing = directory / f"{name}.json"
    scored = json.loads(existing.read_text(encoding="utf-8")).get("data") if existing.exists() else None
    if scored in (None, str(data)):
        return name
    digest = hashlib.sha256(str(data).encode("utf-8")).hexdigest()[:8]
    return report_name(f"data-{data.stem}-{digest}", shots, scoring)


def run_suite(
    target: Target,
    suite: Suite,
    limit: int | None = None,
    seed: int = 0,
    samples: int = 1000,
    shots: int = 0,
    scoring: str | None = None,
) -> tuple[dict, dict]:
    """(report, task results) of `target` on every task of `suite`, with `shots` demonstrations before each prompt
    and classification scored as `scoring` says (`run_task`)."""
    results, specs = {}, {}
    for spec, records in suite_tasks(suite, limit, seed):
        print(f"{suite.name}: {spec.name} ({len(records)} examples) ...", flush=True)
        specs[spec.name] = spec
        results[spec.name] = run_task(target, spec, records, samples, seed, shots, scoring)
    name = report_name(suite.name, shots, scoring)
    return build_report(name, target.name, results, seed, samples, average(results, specs)), results


def _protocol_cells(task: dict) -> str:
    """A task's shots (with the mean really shown, when long prompts dropped some) and scoring cells."""
    shots = str(task["shots"])
    if task["shots"] and task["demonstrations_shown"] < task["shots"]:
        shots += f" ({task['demonstrations_shown']:.1f} shown)"
    return f"{shots} | {task.get('scoring', '-')}"


def _notes(report: dict) -> list[str]:
    """Below the table: each metric a task could not score on its records, and what a task's scores left out."""
    notes = [
        f"- {name}: {metric} not scored: {reason}"
        for name, task in report["tasks"].items()
        for metric, reason in task.get("unscored", {}).items()
    ]
    notes += [f"- {name}: {note}" for name, task in report["tasks"].items() for note in task.get("notes", [])]
    return ["", *notes] if notes else []


def render_suite(report: dict) -> str:
    """The suite report as a Markdown table: every metric with its 95% interval."""
    lines = [
        f"# {report['suite']}: {report['target']}",
        "",
        "| task | examples | shots | scoring | metric | score [95% CI] | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, task in report["tasks"].items():
        if "skipped" in task:
            lines.append(f"| {name} | {task['examples']} | - | - | - | - | skipped: {task['skipped']} |")
            continue
        note = f"{task['unmatched_share']:.1f}% answers matched no label" if task.get("unmatched_share") else ""
        for i, (metric, value) in enumerate(task["metrics"].items()):
            first = i == 0
            lines.append(
                f"| {name if first else ''} | {task['examples'] if first else ''} | "
                f"{_protocol_cells(task) if first else ' | '} | {metric} | {format_interval(value)} | "
                f"{note if first else ''} |"
            )
    lines += _notes(report)
    if report["average"]:
        lines += [
            "",
            f"Average of primary metrics ({', '.join(f'{t} {m}' for t, m in report['average']['over'].items())}): "
            f"**{report['average']['value']:.2f}**",
        ]
    precisions = sorted({task["precision"] for task in report["tasks"].values() if task.get("precision")})
    lines += [
        "",
        f"Bootstrap: {report['bootstrap_samples']} resamples, seed {report['seed']}."
        + (f" Weights in {', '.join(precisions)}." if precisions else ""),
    ]
    return "\n".join(lines) + "\n"


def outputs_jsonl(results: dict[str, TaskResult]) -> str:
    rows = []
    for name, result in results.items():
        shown = result.shown or [0] * len(result.outputs)
        for i, (output, reference) in enumerate(zip(result.outputs, result.references)):
            row = {"task": name, "index": i, "shots": shown[i], "output": output, "reference": reference}
            rows.append(json.dumps(row, ensure_ascii=False))
    return "".join(row + "\n" for row in rows)


def write_suite_report(directory: Path, report: dict, results: dict[str, TaskResult]) -> Path:
    """<suite>.json, .md and .outputs.jsonl in `directory`; returns the JSON path."""
    stem = directory / report["suite"]
    write_atomic(stem.with_suffix(".outputs.jsonl"), outputs_jsonl(results))
    write_atomic(stem.with_suffix(".md"), render_suite(report))
    write_json(stem.with_suffix(".json"), report)
    return stem.with_suffix(".json")
