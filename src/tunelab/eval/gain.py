"""What tuning gained, task by task: a run's tasks scored before and after training, as eval.json keeps them.

Every run, one task or many, is scored the same way: each task with its own metrics (bootstrap 95% intervals,
0-100 scale), held-out tasks marked, and macro averages of the primary metrics over the trained and the
held-out tasks. Before training, the base model may be scored zero-shot (`base`) and few-shot (`few_shot`).
"""

from __future__ import annotations

from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import run_task
from tunelab.eval.targets import Target
from tunelab.records import Record
from tunelab.tasks import TaskSpec

ScoredTasks = dict[str, tuple[TaskSpec, list[Record], bool]]
"""Task name -> (spec, test records, held out?)."""


def score_tasks(
    target: Target,
    tasks: ScoredTasks,
    seed: int,
    samples: int = 1000,
    shots: int = 0,
    scoring: str | None = None,
    pools: dict[str, list[Record]] | None = None,
) -> dict[str, dict]:
    """Each task's report (`TaskResult.as_dict`) for `target`, which answers each task its own way: after `shots`
    demonstrations drawn from the task's records in `pools` (a run's training records; the task's own train split
    for a task without them), classification scored as `scoring` says. Where the target generated text, the report
    keeps each answer, in test-record order, under `answers`: a run's base and tuned answers to the same prompts,
    for a reader, a judge or a rater to compare."""
    results, pools = {}, pools or {}
    for name, (spec, records, _) in tasks.items():
        print(f"scoring {target.name} on {name} ({len(records)} examples) ...", flush=True)
        result = run_task(target, spec, records, samples, seed, shots, scoring, pools.get(name))
        results[name] = {**result.as_dict(), **({"answers": result.outputs} if result.finishes else {})}
    return results


def _macro(results: dict[str, dict] | None, tasks: ScoredTasks, held_out: bool) -> float | None:
    """Mean primary metric over the scored 0-100 metrics of the trained (or held-out) tasks (a task whose primary
    metric no record could be scored on, `TaskResult.unscored`, is left out)."""
    if results is None:
        return None
    values = [
        results[name]["metrics"][spec.primary_metric]["value"]
        for name, (spec, _, out) in tasks.items()
        if out == held_out
        and spec.primary_metric in results[name].get("metrics", {})
        and get_metric(spec.primary_metric).higher_is_better
    ]
    return sum(values) / len(values) if values else None


def evaluation_summary(
    tasks: ScoredTasks, base: dict[str, dict] | None, tuned: dict[str, dict], few_shot: dict[str, dict] | None = None
) -> dict:
    """eval.json's scores: per task the base model zero-shot (`base`) and few-shot, the tuned model, and the macro
    averages of each (None where a baseline was not scored)."""
    scored = {"base": base, "few_shot": few_shot, "tuned": tuned}
    per_task = {
        name: {
            "kind": spec.kind,
            "metric": spec.primary_metric,
            "held_out": held_out,
            **{role: results.get(name) if results else None for role, results in scored.items()},
        }
        for name, (spec, _, held_out) in tasks.items()
    }
    return {
        "tasks": per_task,
        "macro_average": {role: _macro(results, tasks, False) for role, results in scored.items()},
        "held_out_average": {role: _macro(results, tasks, True) for role, results in scored.items()},
    }


def primary_score(evaluation: dict, which: str = "tuned") -> float | None:
    """A run's headline number: its one task's primary metric, or the macro average over its trained tasks."""
    tasks = [task for task in evaluation["tasks"].values() if not task["held_out"]]
    if len(tasks) == 1:
        result = tasks[0][which]
        scored = (result or {}).get("metrics", {})
        return scored[tasks[0]["metric"]]["value"] if tasks[0]["metric"] in scored else None
    return evaluation["macro_average"][which]
