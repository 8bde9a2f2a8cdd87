"""Robustness to messy input (noise injection, as HELM does): the task metric on clean inputs and on the
same examples with each seeded perturbation applied to the task's input fields, and the change with a
paired-bootstrap 95% interval. Labels and references are never touched; the perturbations live in
`tunelab.eval.perturb`.
"""

from __future__ import annotations

import time

from tunelab.eval.bootstrap import format_interval, paired_bootstrap
from tunelab.eval.metrics import get_metric
from tunelab.eval.perturb import perturb_fields
from tunelab.eval.runner import run_task
from tunelab.eval.targets import Target
from tunelab.kinds import perturbed_kinds
from tunelab.records import Record
from tunelab.tasks import TaskError, TaskSpec


def perturbed_records(records: list[Record], spec: TaskSpec, name: str, severity: float, seed: int) -> list[Record]:
    """Copies of `records` whose input fields carry perturbation `name`; each record gets its own noise."""
    if not spec.handler.perturbed:
        raise TaskError(
            f"task {spec.name} ({spec.kind}) is not perturbed: noise inside tokens or scored text would change "
            f"what the gold answer refers to; use a {perturbed_kinds()} task"
        )
    return [
        Record(perturb_fields(r.fields, spec.input_fields, name, severity, seed, key=i), r.where)
        for i, r in enumerate(records)
    ]


def robustness_report(
    target: Target,
    spec: TaskSpec,
    records: list[Record],
    perturbations: list[str],
    severity: float = 0.1,
    seed: int = 0,
    samples: int = 1000,
) -> dict:
    """Clean vs each perturbation on the same examples: the primary metric, the change and its interval."""
    metric = get_metric(spec.primary_metric)
    print(f"robustness: {spec.name} clean ({len(records)} examples) ...", flush=True)
    clean = run_task(target, spec, records, samples, seed)
    if clean.skipped:
        raise TaskError(f"cannot test {target.name} on {spec.name}: {clean.skipped}")
    clean_predictions, references = clean.metric_inputs(metric.name)
    rows = {}
    for name in perturbations:
        print(f"robustness: {spec.name} with {name} ...", flush=True)
        noisy = run_task(target, spec, perturbed_records(records, spec, name, severity, seed), samples, seed)
        change = paired_bootstrap(
            metric, clean_predictions, noisy.metric_inputs(metric.name)[0], references, samples=samples, seed=seed
        )
        rows[name] = {
            "score": noisy.scores[metric.name].as_dict(),
            "change": change.as_dict(),
            "significant": change.low > 0 or change.high < 0,
            "example": {
                "clean": records[0].fields,
                "perturbed": perturbed_records(records[:1], spec, name, severity, seed)[0].fields,
            },
        }
    return {
        "task": spec.name,
        "target": target.name,
        "metric": metric.name,
        "severity": severity,
        "seed": seed,
        "examples": len(records),
        "bootstrap_samples": samples,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "clean": clean.scores[metric.name].as_dict(),
        "perturbations": rows,
    }


def render_robustness(report: dict) -> str:
    lines = [
        f"# Robustness of `{report['target']}` on {report['task']} ({report['examples']} examples, "
        f"severity {report['severity']}, seed {report['seed']})",
        "",
        f"| input | {report['metric']} [95% CI] | change vs clean [95% CI] |",
        "| --- | --- | --- |",
        f"| clean | {format_interval(report['clean'])} | |",
    ]
    for name, row in report["perturbations"].items():
        score, change = row["score"], row["change"]
        mark = " *" if row["significant"] else ""
        lines.append(f"| {name} | {format_interval(score)} | {format_interval(change, signed=True)}{mark} |")
    lines += ["", "\\* the interval of the change excludes zero (paired bootstrap over the same examples)."]
    return "\n".join(lines) + "\n"
