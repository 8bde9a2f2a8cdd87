"""Suites as data: a YAML list of tasks with example limits (`tasks/suites/*.yaml`, or a file by path).

A suite lives beside the tasks it lists, below evaluation, because more than evaluation reads it: the data
checks compare training data with every record a suite can score, and `data.drop_overlap` drops training
examples found there, before any model loads. Reading its tasks' records is `tunelab.data.task_records.suite_tasks`; running a suite is
`tunelab.eval.suites`.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.tasks.registry import SUITES_DIR, find_yaml, load_task, read_yaml
from tunelab.tasks.spec import TaskError


class SuiteEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: str
    """A built-in task name or a task YAML path."""
    limit: int | None = Field(None, ge=1)
    """Examples drawn (seeded) from the task's split; all when absent."""


class Suite(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    tasks: list[SuiteEntry] = Field(min_length=1)


def load_suite(reference: str) -> Suite:
    """A built-in suite by name (glue-mini, retention) or a suite YAML by path; every task must load."""
    path = find_yaml(reference, SUITES_DIR, "suite")
    try:
        suite = Suite.model_validate(read_yaml(path, "suite"))
    except ValidationError as exc:
        problems = "\n".join(f"  - {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise TaskError(f"{path} is not a valid suite:\n{problems}") from None
    for entry in suite.tasks:
        load_task(entry.task)
    return suite
