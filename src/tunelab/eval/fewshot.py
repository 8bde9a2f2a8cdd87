"""Few-shot prompting: solved examples of a task shown before each scored one (GPT-3's in-context learning).

Demonstrations are drawn for each scored example on its own, seeded by the run's seed and the example's index (as
GPT-3 and lm-evaluation-harness draw them), from the task's train split, or from records a caller gives (a run's
own training records). A task with no train split (xsum, squad_mini) draws from the records of its evaluated split
that are not being scored. A candidate whose fields equal a scored record's is never drawn, so no prompt shows
the answer to a scored example. Each demonstration is the task's first template and its answer (`TaskSpec.target`):
how they are laid out is `tunelab.data.templates.format_decoder_prompt`, how many fit the input the runner's.
"""

from __future__ import annotations

import json
import random

from tunelab.data.task_records import load_records
from tunelab.eval import EvaluationError
from tunelab.records import Record
from tunelab.render import Demonstration
from tunelab.tasks import TaskError, TaskSpec


class FewShotError(EvaluationError):
    """Too few records to draw the demonstrations from; the message says what to change."""


def _fields_key(record: Record) -> str:
    """A record's fields as one comparable string: two records with equal fields are the same example."""
    return json.dumps(record.fields, sort_keys=True, default=str, ensure_ascii=False)


def _task_candidates(spec: TaskSpec) -> tuple[list[Record], str]:
    """The task's train split, or, for a task that has none, its evaluated split; and which it is, for errors."""
    try:
        return load_records(spec, split=spec.train_split), f"train split {spec.train_split}"
    except TaskError:
        return load_records(spec), f"evaluated split {spec.split} (it has no train split {spec.train_split})"


def demonstration_pool(
    spec: TaskSpec, scored: list[Record], shots: int, candidates: list[Record] | None = None
) -> list[Record]:
    """The records demonstrations are drawn from: `candidates`, else the task's train split (its evaluated split
    when it has none), less every record whose fields equal a scored record's."""
    where = "given training records"
    if candidates is None:
        candidates, where = _task_candidates(spec)
    scored_keys = {_fields_key(record) for record in scored}
    pool = [record for record in candidates if _fields_key(record) not in scored_keys]
    if len(pool) < shots:
        raise FewShotError(
            f"task {spec.name}: {shots} demonstrations need {shots} records that are not being scored, and its "
            f"{where} hold {len(pool)} ({len(candidates) - len(pool)} more are scored); lower --shots "
            "(eval.shots in a run config), or --limit so that fewer records are scored"
        )
    return pool


def draw_demonstrations(
    spec: TaskSpec, records: list[Record], shots: int, seed: int, candidates: list[Record] | None = None
) -> list[list[Demonstration]]:
    """`shots` demonstrations (prompt, answer) for each of `records`, drawn without replacement from
    `demonstration_pool`, with a generator seeded by `seed` and the record's index: the same draw for every model
    and every run with that seed, and a different one for each scored example."""
    pool = demonstration_pool(spec, records, shots, candidates)
    return [
        [
            (spec.prompt(pool[i]), spec.target(pool[i]))
            for i in random.Random(f"{seed}:{index}").sample(range(len(pool)), shots)
        ]
        for index in range(len(records))
    ]
