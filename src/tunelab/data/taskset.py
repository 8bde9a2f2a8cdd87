"""The tasks a run trains and scores, with their records: one path for every run.

A `data:` section is one inline task (its fields, template and label set, `tunelab.tasks.inline_task`) whose
records are the run's own files, split as `tunelab.data.splits` says. A `mixture:` lists built-in or YAML tasks,
each read from its own train, validation and test splits, plus held-out tasks that are only scored. Everything
after this point (planning, encoding, training, scoring) sees the same `TaskSet`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelab.config import DataConfig, MixtureTask, RunConfig
from tunelab.data.cleaning import Removed
from tunelab.data.splits import load_task_data
from tunelab.data.task_records import load_records
from tunelab.records import DataError, Record
from tunelab.tasks import TaskError, TaskSpec, inline_task, load_task


@dataclass
class TrainingTask:
    """A task the run trains on: its spec, its splits, and the weight of its examples in the loss."""

    spec: TaskSpec
    train: list[Record]
    validation: list[Record]
    test: list[Record]
    loss_weight: float = 1.0


@dataclass
class TaskSet:
    trained: dict[str, TrainingTask]
    held_out: dict[str, tuple[TaskSpec, list[Record]]] = field(default_factory=dict)
    """Tasks never trained on, scored before and after tuning (mixture.eval_only)."""
    labels: list[str] | None = None
    """A single classifier's label set, in head order (`data:` classification runs)."""
    notes: list[str] = field(default_factory=list)
    """What was done to the data (splits made, caps applied), for the log and the card."""
    names: dict[str, str] = field(default_factory=dict)
    """Each mixture entry's task reference (a built-in name or a YAML path) -> the task's name."""
    removed: list[Removed] = field(default_factory=list)
    """Training records `data.dedup` and `data.drop_overlap` removed (`data:` runs), each with why."""

    def scored(self) -> dict[str, tuple[TaskSpec, list[Record], bool]]:
        """Every task scored at the end of training with its test records; True marks a held-out task."""
        scored = {name: (task.spec, task.test, False) for name, task in self.trained.items()}
        scored.update({name: (spec, records, True) for name, (spec, records) in self.held_out.items()})
        return scored

    def counts(self) -> dict[str, int]:
        """Examples per split, over all tasks, as run.json records them."""
        return {
            "train": sum(len(t.train) for t in self.trained.values()),
            "validation": sum(len(t.validation) for t in self.trained.values()),
            "test": sum(len(records) for _, records, _ in self.scored().values()),
        }


def _data_taskset(config: RunConfig) -> TaskSet:
    data = load_task_data(config)
    spec = inline_task(config, data.labels)
    return TaskSet(
        {spec.name: TrainingTask(spec, data.train, data.validation, data.test)},
        labels=data.labels,
        notes=data.notes,
        names={spec.name: spec.name},
        removed=data.removed,
    )


def _trained_task(entry: MixtureTask, config: RunConfig, notes: list[str]) -> TrainingTask:
    spec = load_task(entry.task)
    mixture, seed = config.mixture, config.training.seed
    if not spec.handler.prompted:
        raise DataError(
            f"task {spec.name} is a perplexity task with no answers to train on; list it under mixture.eval_only"
        )
    try:
        train = load_records(spec, entry.max_examples, seed, split=spec.train_split)
    except TaskError as exc:
        raise DataError(
            f"task {spec.name} cannot be trained on ({exc}); list it under mixture.eval_only instead"
        ) from None
    try:
        validation = load_records(spec, mixture.validation_examples, seed, split=spec.validation_split)
    except TaskError:
        validation = []
        notes.append(f"task {spec.name} has no validation split; no validation loss for it")
    test = load_records(spec, mixture.eval_examples, seed)
    return TrainingTask(spec, train, validation, test, entry.loss_weight)


def _mixture_taskset(config: RunConfig) -> TaskSet:
    trained: dict[str, TrainingTask] = {}
    notes: list[str] = []
    names: dict[str, str] = {}
    for stage in config.mixture.stage_list():
        for entry in stage.tasks:
            task = _trained_task(entry, config, notes)
            name = names[entry.task] = task.spec.name
            if name in trained and len(trained[name].train) != len(task.train):
                raise DataError(
                    f"task {name} appears in two stages with different max_examples; give it the same in both"
                )
            trained.setdefault(name, task)
    held_out = {}
    for reference in config.mixture.eval_only:
        spec = load_task(reference)
        if spec.name in trained:
            raise DataError(
                f"task {spec.name} is both trained on and listed in mixture.eval_only; a held-out task must never be trained"
            )
        held_out[spec.name] = (spec, load_records(spec, config.mixture.eval_examples, config.training.seed))
    return TaskSet(trained, held_out, notes=notes, names=names)


def load_taskset(config: RunConfig) -> TaskSet:
    """Read, split and check every task of the run; every data error surfaces here, before a model loads."""
    return _mixture_taskset(config) if config.mixture is not None else _data_taskset(config)


@dataclass
class RunTasks:
    """A finished run's tasks, without their records: what its commands (predict, eval --data, ...) answer."""

    specs: dict[str, TaskSpec]
    trained: list[str]

    def pick(self, name: str | None) -> TaskSpec:
        """The task a command means: the run's one trained task, or the one named (a task of the run, or any
        built-in task or task YAML, which the run then answers as it answers unseen tasks)."""
        if name is None:
            if len(self.trained) > 1:
                raise TaskError(f"this run was trained on {', '.join(self.trained)}; say which task with --task NAME")
            return self.specs[self.trained[0]]
        return self.specs[name] if name in self.specs else load_task(name)


def task_specs(config: RunConfig, labels: list[str] | None = None) -> RunTasks:
    """The run's tasks by name, trained ones first, without reading any records (for loading a finished run)."""
    if config.mixture is None:
        spec = inline_task(config, labels)
        return RunTasks({spec.name: spec}, [spec.name])
    specs: dict[str, TaskSpec] = {}
    for stage in config.mixture.stage_list():
        for entry in stage.tasks:
            spec = load_task(entry.task)
            specs.setdefault(spec.name, spec)
    trained = list(specs)
    for reference in config.mixture.eval_only:
        spec = load_task(reference)
        specs.setdefault(spec.name, spec)
    return RunTasks(specs, trained)


def test_records(config: RunConfig, spec: TaskSpec) -> list[Record]:
    """A task's test records as the run scored them: its own test split for a `data:` task, else the task's
    seeded evaluation draw."""
    if config.mixture is None:
        return load_task_data(config).test
    return load_records(spec, config.mixture.eval_examples, config.training.seed)


def instruction_data(config: RunConfig) -> DataConfig:
    """How instruction records (a rendered prompt and its target answer, `TaskSpec.instruction`) are tokenised: what
    text-to-text training encodes and what the data report measures."""
    return DataConfig(
        prompt_field="prompt",
        response_field="target",
        max_length=config.data.max_length,
        max_target_length=config.data.max_target_length,
    )
