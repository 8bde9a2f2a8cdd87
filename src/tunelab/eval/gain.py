"""What tuning gained, task by task: a run's tasks scored before and after training, as eval.json keeps them.

Every run, one task or many, is scored the same way: each task with its own metrics (bootstrap 95% intervals,
0-100 scale), held-out tasks marked, and macro averages of the primary metrics over the trained and the
held-out tasks.
"""

from __future__ import annotations

from tunelab.data.readers import Record
from tunelab.eval.metrics import get_metric
from tunelab.eval.runner import run_task
from tunelab.eval.targets import Target
from tunelab.tasks import TaskSpec

ScoredTasks = dict[str, tuple[TaskSpec, list[Record], bool]]
"""Task name -> (spec, test records, held out?)."""


def score_tasks(target: Target, tasks: ScoredTasks, seed: int, samples: int = 1000) -> dict[str, dict]:
    """Each task's report (`TaskResult.as_dict`) for `target`, which answers each task its own way."""
    results = {}
    for name, (spec, records, _) in tasks.items():
        print(f"scoring {target.name} on {name} ({len(records)} examples) ...", flush=True)
        results[name] = run_task(target, spec, records, samples, seed).as_dict()
    return results


def _macro(results: dict[str, dict] | None, tasks: ScoredTasks, held_out: bool) -> float | None:
    """Mean primary metric over the scored 0-100 metrics of the trained (or held-out) tasks."""
    if results is None:
        return None
    values = [
        results[name]["metrics"][spec.primary_metric]["value"]
        for name, (spec, _, out) in tasks.items()
        if out == held_out and "metrics" in results[name] and get_metric(spec.primary_metric).higher_is_better
    ]
    return sum(values) / len(values) if values else None


def evaluation_summary(tasks: ScoredTasks, base: dict[str, dict] | None, tuned: dict[str, dict]) -> dict:
    """eval.json's scores: per task base and tuned, and the macro averages."""
    per_task = {
        name: {
            "kind": spec.kind,
            "metric": spec.primary_metric,
            "held_out": held_out,
            "base": base.get(name) if base else None,
            "tuned": tuned[name],
        }
        for name, (spec, _, held_out) in tasks.items()
    }
    return {
        "tasks": per_task,
        "macro_average": {"base": _macro(base, tasks, False), "tuned": _macro(tuned, tasks, False)},
        "held_out_average": {"base": _macro(base, tasks, True), "tuned": _macro(tuned, tasks, True)},
    }


def primary_score(evaluation: dict, which: str = "tuned") -> float | None:
    """A run's headline number: its one task's primary metric, or the macro average over its trained tasks."""
    tasks = [task for task in evaluation["tasks"].values() if not task["held_out"]]
    if len(tasks) == 1:
        result = tasks[0][which]
        return result["metrics"][tasks[0]["metric"]]["value"] if result and "metrics" in result else None
    return evaluation["macro_average"][which]
