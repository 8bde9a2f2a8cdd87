"""Catastrophic forgetting: what a tuned model can no longer do that its base model could.

Both models answer the same examples of every task in a suite (the `retention` suite by default). For
each task the report gives base score, tuned score, the change, and the paired-bootstrap 95% interval of
the change (both models resampled on the same example indices); a change whose interval excludes zero is
marked significant. The average change is the mean of those changes (tuned - base, as in the table: negative
means the tuned model scores lower) over the primary metrics on the 0-100 scale; perplexity is reported beside it
as a relative change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from tunelab.data.task_records import suite_tasks
from tunelab.eval.bootstrap import format_interval, paired_bootstrap
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import TaskResult, run_task
from tunelab.eval.targets import Target
from tunelab.tasks.suite import Suite


def _evaluate_all(
    target: Target, tasks, samples: int, seed: int, label: str, scoring: str | None
) -> dict[str, TaskResult]:
    results = {}
    for spec, records in tasks:
        print(f"forgetting: {label} on {spec.name} ({len(records)} examples) ...", flush=True)
        results[spec.name] = run_task(target, spec, records, samples, seed, scoring=scoring)
    return results


def _task_row(spec, base: TaskResult, tuned: TaskResult, samples: int, seed: int) -> dict:
    if base.skipped or tuned.skipped:
        return {"kind": spec.kind, "examples": base.examples, "skipped": base.skipped or tuned.skipped}
    metric = get_metric(spec.primary_metric)
    base_predictions, references = base.metric_inputs(metric.name)
    tuned_predictions, _ = tuned.metric_inputs(metric.name)
    change = paired_bootstrap(metric, base_predictions, tuned_predictions, references, samples=samples, seed=seed)
    significant = change.low > 0 or change.high < 0
    direction = {True: -1, False: 1, None: 0}[metric.higher_is_better]  # a descriptive metric is never worse
    worse = direction * change.value > 0
    row = {
        "kind": spec.kind,
        "examples": base.examples,
        "scoring": {"base": base.scoring, "tuned": tuned.scoring},
        "metric": metric.name,
        "higher_is_better": metric.higher_is_better,
        "base": base.scores[metric.name].as_dict(),
        "tuned": tuned.scores[metric.name].as_dict(),
        "change": change.as_dict(),
        "significant": significant,
        "forgotten": significant and worse,
    }
    if metric.higher_is_better is False:
        row["relative_change_pct"] = 100.0 * change.value / row["base"]["value"]
    if tuned.unmatched is not None:
        row["unmatched_share"] = {"base": base.unmatched, "tuned": tuned.unmatched}
    return row


def forgetting_report(
    base: Target | Callable[[], Target],
    tuned: Target | Callable[[], Target],
    suite: Suite,
    limit: int | None = None,
    seed: int = 0,
    samples: int = 1000,
    scoring: str | None = None,
) -> dict:
    """Base vs tuned on the same examples of every suite task, classification scored as `scoring` says (each
    task's own scoring when absent). A target may be given as a loader, so only one model needs to be in memory
    at a time."""
    tasks = suite_tasks(suite, limit, seed)
    results = {}
    names = {}
    for role, target in (("base", base), ("tuned", tuned)):
        loaded = target() if callable(target) else target
        names[role] = loaded.name
        results[role] = _evaluate_all(loaded, tasks, samples, seed, role, scoring)
        del loaded
    rows = {
        spec.name: _task_row(spec, results["base"][spec.name], results["tuned"][spec.name], samples, seed)
        for spec, _ in tasks
    }
    changes = [
        row["tuned"]["value"] - row["base"]["value"]
        for row in rows.values()
        if "skipped" not in row and row["higher_is_better"]
    ]
    return {
        "suite": suite.name,
        "base": names["base"],
        "tuned": names["tuned"],
        "seed": seed,
        "bootstrap_samples": samples,
        "scoring": scoring,
        "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "tasks": rows,
        "average_change": sum(changes) / len(changes) if changes else None,
        "tasks_forgotten": sorted(name for name, row in rows.items() if row.get("forgotten")),
    }


def render_forgetting(report: dict) -> str:
    """The forgetting table in Markdown, for the CLI, the report file and the run card."""
    lines = [
        f"Base `{report['base']}` vs tuned `{report['tuned']}` on suite `{report['suite']}` "
        f"(same examples; change = tuned - base, paired bootstrap 95% CI, {report['bootstrap_samples']} resamples"
        + (f"; classification scored by {report['scoring']}" if report.get("scoring") else "")
        + ").",
        "",
        "| task | examples | metric | base | tuned | change [95% CI] | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in report["tasks"].items():
        if "skipped" in row:
            lines.append(f"| {name} | {row['examples']} | - | - | - | - | skipped: {row['skipped']} |")
            continue
        change = row["change"]
        improved = "improved" if row["higher_is_better"] is not None else "changed"  # a length is not better
        verdict = "forgotten" if row["forgotten"] else (improved if row["significant"] else "no significant change")
        if row.get("unmatched_share", {}).get("tuned"):
            verdict += f" ({row['unmatched_share']['tuned']:.0f}% of tuned answers named no label)"
        arrow = {True: "", False: " (lower is better)", None: " (descriptive)"}[row["higher_is_better"]]
        lines.append(
            f"| {name} | {row['examples']} | {row['metric']}{arrow} | {row['base']['value']:.2f} | "
            f"{row['tuned']['value']:.2f} | {format_interval(change, signed=True)} | {verdict} |"
        )
    if report["average_change"] is not None:
        lines += [
            "",
            "Average change (tuned - base, as in the table, over the 0-100 metrics; negative: the tuned model scores "
            f"lower): **{report['average_change']:+.2f}** points; "
            f"tasks forgotten: {', '.join(report['tasks_forgotten']) or 'none'}.",
        ]
    return "\n".join(lines) + "\n"
