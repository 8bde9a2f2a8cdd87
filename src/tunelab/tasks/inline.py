"""The task a run's `data:` section describes, so that a single-task run is a mixture of one task."""

from __future__ import annotations

from pathlib import Path

from tunelab.config import RunConfig
from tunelab.kinds import kind_of_run
from tunelab.tasks.spec import TaskSpec


def data_task_name(source: str | None) -> str:
    """A `data:` section's task name, from where its training data lives: the folder of a split file
    (`.../sst2/train.jsonl` -> sst2), the file's own name otherwise, or a hub dataset's name."""
    if not source:
        return "data"
    if source.startswith("hf:"):
        return source[3:].split(":")[0].rstrip("/").split("/")[-1] or "data"
    path = Path(source)
    if path.is_dir():
        return path.name
    named_by_folder = path.stem.lower() in ("train", "training", "data") and path.parent.name not in ("", ".")
    return path.parent.name if named_by_folder else path.stem


def inline_task(config: RunConfig, labels: list[str] | None = None) -> TaskSpec:
    """The task a `data:` section describes, so that a single-task run is a mixture of one task: a classifier's
    text fields and label set, or a generator's prompt and answer fields, with the run's decoding settings."""
    data, kind = config.data, kind_of_run(config)
    return TaskSpec(
        name=data_task_name(data.train),
        kind=kind.name,
        description=f"the run's data ({data.train})",
        source=data.train or "",
        max_length=data.max_length,
        metrics=list(kind.inline_metrics),
        **kind.inline_fields(config, labels),
    )
