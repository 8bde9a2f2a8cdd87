"""The training order of every run, planned before training: which example of which task comes at which step.

A single task is a one-task, one-stage mixture: one seeded shuffle per epoch. A mixture draws per epoch as its
strategy says, stage after stage for a curriculum, interleaved into task-balanced batches when asked, or
regrouped into single-task batches for per-task adapters. The Trainer then reads the order as it is
(`tunelab.train.trainer.PlannedOrder`), so the mix printed before training is the mix trained on, it is saved
in run.json, and a resumed run continues exactly where the killed one stopped.

Stages are cut at whole *global* batches (per-device batch x accumulation x processes), and under torchrun each
process takes its share of every global batch: N processes see, step for step, what one process with an N
times larger batch sees.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from tunelab.config import RunConfig, StageConfig
from tunelab.data.mixture import (
    Draw,
    Stage,
    balanced_order,
    curriculum_plan,
    describe_mix,
    examples_per_task,
    mixture_rates,
)
from tunelab.data.taskset import TaskSet


@dataclass
class Plan:
    order: list[Draw]
    """(task name, index into that task's training records), in training order, a whole number of global batches."""
    global_batch: int
    boundaries: list[int]
    """Optimiser steps at which the second, third, ... curriculum stage starts."""
    stages: list[dict]
    """Per stage: name, budget, start step, and per task the available, drawn-per-epoch and share figures."""
    steps_per_epoch: int
    """Optimiser steps of one pass over the first stage's per-epoch mix: the evaluation interval of a one-stage run."""

    @property
    def steps(self) -> int:
        return len(self.order) // self.global_batch

    @property
    def eval_steps(self) -> int:
        """Validate once per epoch, or four times over a curriculum (whose stages each have their own epochs)."""
        return max(1, self.steps // 4) if self.boundaries else max(1, min(self.steps_per_epoch, self.steps))

    def epochs_done(self, step: int) -> float:
        return step / self.steps_per_epoch


def _per_stage(
    order: list[Draw], boundaries: list[int], batch: int, stages: list[Stage], reorder
) -> tuple[list[Draw], list[int]]:
    """Apply `reorder` within each stage's slice of the order, so no batch mixes two stages; returns the new order
    and stage boundaries. A reorder may lengthen a stage to whole batches, except a stage with a step budget,
    which keeps its steps."""
    edges = [0, *(b * batch for b in boundaries), len(order)]
    parts = [
        reorder(order[start:end])[: stage.steps * batch if stage.steps else None]
        for stage, start, end in zip(stages, edges, edges[1:])
    ]
    starts = [sum(len(part) for part in parts[:i]) // batch for i in range(1, len(parts))]
    return [draw for part in parts for draw in part], starts


def single_task_batches(order: list[Draw], batch: int, seed: int) -> list[Draw]:
    """The order regrouped so every global batch holds one task (per-task adapters route a whole step to one
    adapter): each task's draws chunked in plan order, its last chunk filled up with its own first draws, and the
    chunks shuffled with a seeded RNG."""
    queues: dict[str, list[Draw]] = {}
    for draw in order:
        queues.setdefault(draw[0], []).append(draw)
    chunks = []
    for task in sorted(queues):
        draws = queues[task]
        short = -len(draws) % batch
        draws = draws + (draws * (short // len(draws) + 1))[:short]
        chunks += [draws[i : i + batch] for i in range(0, len(draws), batch)]
    random.Random(f"{seed}:single-task-batches").shuffle(chunks)
    return [draw for chunk in chunks for draw in chunk]


def _describe(stage: Stage, single: bool, strategy: str) -> str:
    budget = f"{stage.steps} steps" if stage.steps else f"{stage.epochs:g} epoch(s)"
    return f"{'mixture' if single else 'stage ' + stage.name} ({strategy}; {budget}):\n{describe_mix(stage.counts, stage.sizes)}"


def _stage(config: RunConfig, tasks: TaskSet, stage_config: StageConfig | None, number: int) -> tuple[Stage, dict]:
    """One stage's draws per epoch (its tasks' sizes, sampling rates and budget), and how run.json describes it.
    `stage_config` is None for a `data:` run: one task, all of its examples each epoch."""
    training, mixture = config.training, config.mixture
    if stage_config is None:
        name, weights = "data", {task: 1.0 for task in tasks.trained}
    else:
        name = stage_config.name or f"stage-{number}"
        weights = {tasks.names[entry.task]: entry.weight for entry in stage_config.tasks}
    sizes = {task: len(tasks.trained[task].train) for task in weights}
    strategy = mixture.strategy if mixture else "proportional"
    rates = mixture_rates(
        sizes,
        strategy,
        weights=weights,
        cap=mixture.cap if strategy == "capped" else None,
        temperature=mixture.temperature if strategy == "temperature" else 1.0,
    )
    counts = examples_per_task(sizes, rates, (mixture.examples_per_epoch if mixture else None) or sum(sizes.values()))
    curriculum = bool(mixture and mixture.stages)  # a curriculum stage has its own budget, else the run's
    steps, epochs = (stage_config.steps, stage_config.epochs) if curriculum else (training.max_steps, training.epochs)
    stage = Stage(name, sizes, counts, steps, epochs)
    if mixture:
        print(_describe(stage, not curriculum, strategy))
    total = max(1, sum(counts.values()))
    described = {
        "name": name,
        "steps": steps,
        "epochs": None if steps else epochs,
        "tasks": {t: {"available": sizes[t], "per_epoch": counts[t], "share": counts[t] / total} for t in sizes},
    }
    return stage, described


def plan_training(config: RunConfig, tasks: TaskSet, processes: int = 1, *, one_task_per_batch: bool) -> Plan:
    """Every training draw of the run, stage by stage; a mixture's table is printed. `one_task_per_batch`: the
    run's objective trains each batch on one task (its `Objective.one_task_per_batch`), so every batch is drawn
    from one task and balanced batches cannot apply."""
    training, mixture = config.training, config.mixture
    batch = training.batch_size * training.gradient_accumulation_steps * processes
    planned = [
        _stage(config, tasks, stage_config, number)
        for number, stage_config in enumerate(mixture.stage_list() if mixture else [None], start=1)
    ]
    stages, described = [stage for stage, _ in planned], [description for _, description in planned]
    order, boundaries = curriculum_plan(stages, batch, training.seed)
    if one_task_per_batch:
        order, boundaries = _per_stage(
            order, boundaries, batch, stages, lambda part: single_task_batches(part, batch, training.seed)
        )
    elif mixture and mixture.balanced_batches:
        order, boundaries = _per_stage(
            order, boundaries, batch, stages, lambda part: balanced_order(part, batch, training.seed)
        )
    for stage, start in zip(described, [0, *boundaries]):
        stage["starts_at_step"] = start
    steps_per_epoch = math.ceil(sum(stages[0].counts.values()) / batch)
    return Plan(order, batch, boundaries, described, steps_per_epoch)
