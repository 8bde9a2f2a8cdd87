"""The evaluation commands, one function each: load the target(s), build the report, write JSON + Markdown.

A run directory keeps its reports in `<run>/eval/`; any other target's go to `eval/<target name>/`
unless an output folder is given. Every file is written atomically.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunelab.data.task_records import load_records
from tunelab.eval.bias import attribute_names, bias_report, render_bias
from tunelab.eval.forgetting import forgetting_report, render_forgetting
from tunelab.eval.perturb import perturbation_names
from tunelab.eval.robustness import render_robustness, robustness_report
from tunelab.eval.suites import report_name, run_suite, write_suite_report
from tunelab.eval.targets import base_target, load_target
from tunelab.runs import write_atomic, write_json
from tunelab.tasks import load_task
from tunelab.tasks.suite import load_suite


def report_dir(target: str, output: str | None) -> Path:
    """Where a target's reports go: the given folder, the run's eval/ folder, or eval/<target name>/."""
    if output:
        return Path(output)
    if (Path(target) / "run.json").exists():
        return Path(target) / "eval"
    return Path("eval") / re.sub(r"[^A-Za-z0-9._-]+", "_", target.strip("/")).strip("_")


def _write(directory: Path, stem: str, report: dict, markdown: str) -> Path:
    write_atomic(directory / f"{stem}.md", markdown)
    write_json(directory / f"{stem}.json", report)
    print(markdown)
    return directory / f"{stem}.json"


def evaluate_suite(
    target: str,
    suite: str,
    limit: int | None = None,
    output: str | None = None,
    seed: int = 0,
    samples: int = 1000,
    batch_size: int | None = None,
    shots: int = 0,
    scoring: str | None = None,
) -> Path:
    """`tunelab eval TARGET --suite NAME [--shots K] [--scoring loglik|generate]`."""
    loaded_suite = load_suite(suite)  # a bad suite fails before a model loads
    report, results = run_suite(load_target(target, batch_size), loaded_suite, limit, seed, samples, shots, scoring)
    path = write_suite_report(report_dir(target, output), report, results)
    print(path.with_suffix(".md").read_text(encoding="utf-8"))
    return path


def forgetting(
    base: str,
    tuned: str,
    suite: str = "retention",
    limit: int | None = None,
    output: str | None = None,
    seed: int = 0,
    samples: int = 1000,
    batch_size: int | None = None,
    scoring: str | None = None,
) -> Path:
    """`tunelab forgetting BASE TUNED --suite NAME [--scoring loglik|generate]`: one model in memory at a time, the
    base asked through a run's own tokenizer when TUNED is a run tuned from it (`base_target`).
    The report is named by suite and protocol, so a loglik rescoring never overwrites a generate-and-map one."""
    loaded_suite = load_suite(suite)
    report = forgetting_report(
        lambda: base_target(base, tuned, batch_size),
        lambda: load_target(tuned, batch_size),
        loaded_suite,
        limit,
        seed,
        samples,
        scoring,
    )
    name = f"forgetting-{report_name(loaded_suite.name, scoring=scoring)}"
    return _write(report_dir(tuned, output), name, report, render_forgetting(report))


def robustness(
    target: str,
    task: str,
    perturbations: str = "all",
    severity: float = 0.1,
    limit: int | None = 200,
    output: str | None = None,
    seed: int = 0,
    samples: int = 1000,
    batch_size: int | None = None,
) -> Path:
    """`tunelab robustness TARGET --task T --perturbations all`."""
    spec, names = load_task(task), perturbation_names(perturbations)
    records = load_records(spec, limit, seed)
    report = robustness_report(load_target(target, batch_size), spec, records, names, severity, seed, samples)
    return _write(report_dir(target, output), f"robustness-{spec.name}", report, render_robustness(report))


def bias(
    target: str,
    task: str,
    attributes: str = "all",
    limit: int | None = 200,
    output: str | None = None,
    seed: int = 0,
    samples: int = 1000,
    batch_size: int | None = None,
) -> Path:
    """`tunelab bias TARGET --task T`: examples that mention each attribute, searched over the whole split."""
    spec, names = load_task(task), attribute_names(attributes)
    records = load_records(spec)
    report = bias_report(load_target(target, batch_size), spec, records, names, limit, seed, samples)
    return _write(report_dir(target, output), f"bias-{spec.name}", report, render_bias(report))
