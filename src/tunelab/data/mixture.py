"""Multi-task mixtures (FLAN/T5-style): which examples of which task are trained on, in which order.

Everything here is pure and deterministic so a run's exact example order can be precomputed, logged and
reproduced; the Trainer consuming it must not shuffle again.

Seeding: every random choice uses `random.Random(<string>)`, e.g. `f"{seed}:{epoch}:{task}"`. String seeds
are hashed with SHA-512 by `random`, so they are stable across processes and unaffected by PYTHONHASHSEED,
and adding a task to a mixture does not change the examples drawn for the other tasks.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Literal, get_args

from tunelab.records import DataError

Strategy = Literal["proportional", "capped", "temperature", "equal"]
STRATEGIES: tuple[str, ...] = get_args(Strategy)

Draw = tuple[str, int]
"""One training example: (task name, index into that task's training examples)."""


class MixtureError(DataError):
    """An invalid mixture setting; the message names the task or setting and what is allowed."""


def _check_sizes(sizes: dict[str, int]) -> None:
    """Every task needs at least one example: a rate or a sample over nothing is meaningless."""
    if not sizes:
        raise MixtureError("sizes: a mixture needs at least one task")
    for task, size in sizes.items():
        if not isinstance(size, int) or size < 1:
            raise MixtureError(f"task '{task}' has {size!r} training examples; each task needs an integer >= 1")


def _check_counts(sizes: dict[str, int], counts: dict[str, int]) -> None:
    """Counts must refer to known tasks and be non-negative integers."""
    _check_sizes(sizes)
    for task, count in counts.items():
        if task not in sizes:
            raise MixtureError(f"counts: task '{task}' is not in sizes (tasks: {', '.join(sizes)})")
        if not isinstance(count, int) or count < 0:
            raise MixtureError(f"counts: task '{task}' has count {count!r}; counts must be integers >= 0")


def _base_rates(sizes: dict[str, int], strategy: str, cap: int | None, temperature: float) -> dict[str, float]:
    """Unnormalised per-task mass of a strategy (checked settings included, so errors name the setting)."""
    if strategy not in STRATEGIES:
        raise MixtureError(f"strategy '{strategy}' is unknown; use one of: {', '.join(STRATEGIES)}")
    if cap is not None and strategy != "capped":
        raise MixtureError(f"cap is only used by strategy 'capped', not '{strategy}'")
    if temperature != 1.0 and strategy != "temperature":
        raise MixtureError(f"temperature is only used by strategy 'temperature', not '{strategy}'")
    if strategy == "proportional":
        return {t: float(s) for t, s in sizes.items()}
    if strategy == "capped":
        if cap is None or not isinstance(cap, int) or cap <= 0:
            raise MixtureError(f"cap must be an integer > 0 for strategy 'capped' (got {cap!r})")
        return {t: float(min(s, cap)) for t, s in sizes.items()}
    if strategy == "temperature":
        if not math.isfinite(temperature) or temperature < 1.0:
            raise MixtureError(f"temperature must be a finite number >= 1 (got {temperature!r}); 1 is proportional")
        return {t: s ** (1.0 / temperature) for t, s in sizes.items()}
    return {t: 1.0 for t in sizes}


def mixture_rates(
    sizes: dict[str, int],
    strategy: Strategy,
    *,
    weights: dict[str, float] | None = None,
    cap: int | None = None,
    temperature: float = 1.0,
) -> dict[str, float]:
    """Sampling probability of each task (sums to 1).

    proportional: size/sum; capped (T5 examples-proportional): min(size, cap)/sum; temperature (T5/mT5):
    size**(1/T)/sum, T >= 1; equal: 1/n. Optional positive per-task `weights` then multiply and renormalise.
    `cap`/`temperature` given to a strategy that ignores them is an error, so a misconfigured mix fails loudly.
    """
    _check_sizes(sizes)
    mass = _base_rates(sizes, strategy, cap, temperature)
    for task, weight in (weights or {}).items():
        if task not in sizes:
            raise MixtureError(f"weights: task '{task}' is not in the mixture (tasks: {', '.join(sizes)})")
        if not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight <= 0:
            raise MixtureError(f"weights: task '{task}' has weight {weight!r}; weights must be finite and > 0")
        mass[task] *= weight
    total = sum(mass.values())
    return {t: m / total for t, m in mass.items()}


def examples_per_task(sizes: dict[str, int], rates: dict[str, float], total: int) -> dict[str, int]:
    """Integer draws per task summing exactly to `total`: largest-remainder rounding of rate*total.

    Equal remainders go to the task whose name sorts first, so the result never depends on dict order.
    Each count is floor or ceil of rate*total, i.e. within 1 of the ideal.
    """
    _check_sizes(sizes)
    if set(rates) != set(sizes):
        raise MixtureError(f"rates are for tasks {sorted(rates)} but sizes for {sorted(sizes)}; they must match")
    if any(not math.isfinite(r) or r < 0 for r in rates.values()) or abs(sum(rates.values()) - 1.0) > 1e-6:
        raise MixtureError("rates must be finite, >= 0 and sum to 1 (use mixture_rates)")
    if not isinstance(total, int) or total < 0:
        raise MixtureError(f"total must be an integer >= 0 (got {total!r})")
    ideal = {t: rates[t] * total for t in sorted(rates)}
    counts = {t: math.floor(x) for t, x in ideal.items()}
    by_remainder = sorted(ideal, key=lambda t: -(ideal[t] - counts[t]))  # stable: name order breaks ties
    for task in by_remainder[: total - sum(counts.values())]:
        counts[task] += 1
    return {t: counts[t] for t in sizes}


def _task_draws(task: str, size: int, count: int, seed: int, epoch: int) -> list[Draw]:
    """A task's draws for one epoch: distinct when count <= size, else every example floor(count/size)
    times plus distinct extras, so no example is seen twice more than another of the same task."""
    rng = random.Random(f"{seed}:{epoch}:{task}")
    repeats, extra = divmod(count, size)
    indices = list(range(size)) * repeats + rng.sample(range(size), extra)
    return [(task, i) for i in indices]


def epoch_plan(sizes: dict[str, int], counts: dict[str, int], seed: int, epoch: int = 0) -> list[Draw]:
    """The (task, example_index) draws of one epoch, all tasks shuffled together; deterministic in
    (seed, epoch) and different across epochs, so capped tasks see fresh examples each epoch."""
    _check_counts(sizes, counts)
    draws = [d for task in sorted(counts) for d in _task_draws(task, sizes[task], counts[task], seed, epoch)]
    random.Random(f"{seed}:{epoch}:shuffle").shuffle(draws)
    return draws


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or batch_size < 1:
        raise MixtureError(f"batch_size must be an integer >= 1 (got {batch_size!r})")


def _queues(plan: list[Draw]) -> dict[str, list[Draw]]:
    """Per-task draws in plan order, keyed by task name in sorted order (independent of plan order)."""
    queues: dict[str, list[Draw]] = {}
    for draw in plan:
        queues.setdefault(draw[0], []).append(draw)
    return {t: queues[t] for t in sorted(queues)}


def _batch_quota(
    batch_size: int, ideal: dict[str, float], deficit: dict[str, float], left: dict[str, int]
) -> dict[str, int]:
    """How many draws of each task one batch takes: floor(batch_size*share) each, and the remaining slots one
    each to the tasks furthest behind their share so far (earlier in the seeded task order on ties).

    Plain round-robin would give batch-level balance only for equal task sizes and end with a single-task
    tail; this weighted form keeps every batch at floor or ceil of batch_size*share. Only when tasks run out
    near the end of the plan may a task exceed its ceil, to keep the batch full.
    """
    quota = {t: min(math.floor(ideal[t]), left[t]) for t in ideal}
    slots = min(batch_size, sum(left.values())) - sum(quota.values())
    rank = {t: i for i, t in enumerate(ideal)}
    for _ in range(slots):
        open_tasks = [t for t in ideal if left[t] > quota[t] and quota[t] < math.ceil(ideal[t])]
        open_tasks = open_tasks or [t for t in ideal if left[t] > quota[t]]
        chosen = max(open_tasks, key=lambda t: (deficit[t] + ideal[t] - quota[t], -rank[t]))
        quota[chosen] += 1
    return quota


def balanced_order(plan: list[Draw], batch_size: int, seed: int) -> list[Draw]:
    """Reorder a plan so each consecutive batch of `batch_size` holds the tasks in proportion to their share
    of the plan (within 1 per task per full batch): task-balanced batches with no single-task stretches.

    Within a batch the tasks are interleaved round-robin in a seeded task order; each task keeps the plan's
    order of its own draws.
    """
    _check_batch_size(batch_size)
    if not plan:
        return []
    tasks = list(_queues(plan).items())
    random.Random(f"{seed}:balanced").shuffle(tasks)  # so no task is systematically first in a batch
    queues = dict(tasks)
    ideal = {t: batch_size * len(q) / len(plan) for t, q in queues.items()}
    deficit = {t: 0.0 for t in queues}
    used = {t: 0 for t in queues}
    order: list[Draw] = []
    while len(order) < len(plan):
        left = {t: len(queues[t]) - used[t] for t in queues}
        quota = _batch_quota(batch_size, ideal, deficit, left)
        for i in range(max(quota.values())):
            order.extend(queues[t][used[t] + i] for t in queues if i < quota[t])
        for t in queues:
            used[t] += quota[t]
            deficit[t] += ideal[t] - quota[t]
    return order


def homogeneous_batches(plan: list[Draw], batch_size: int, seed: int) -> list[list[Draw]]:
    """Batches that each hold ONE task (for per-task adapters/heads): each task's draws chunked in plan order
    (its last batch may be short), then all batches shuffled with a seeded RNG."""
    _check_batch_size(batch_size)
    queues = _queues(plan)
    batches = [q[i : i + batch_size] for q in queues.values() for i in range(0, len(q), batch_size)]
    random.Random(f"{seed}:homogeneous-batches").shuffle(batches)
    return batches


def homogeneous_order(plan: list[Draw], batch_size: int, seed: int) -> list[Draw]:
    """The flat order of `homogeneous_batches`. Chunking it by `batch_size` reproduces the batches only when
    every task's draw count is a multiple of batch_size; otherwise feed the batches themselves."""
    return [d for batch in homogeneous_batches(plan, batch_size, seed) for d in batch]


@dataclass(frozen=True)
class Stage:
    """One curriculum stage: a mixture trained for a step budget, or for `epochs` when steps is None."""

    name: str
    sizes: dict[str, int]
    counts: dict[str, int]
    steps: int | None
    epochs: float = 1.0


def _stage_seed(seed: int, index: int, name: str) -> int:
    """A per-stage seed, so two stages over the same tasks do not replay the same draws."""
    digest = hashlib.sha256(f"{seed}:stage{index}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def _stage_draws(stage: Stage, batch_size: int) -> int:
    """The stage's draw count: steps*batch_size, or ceil(epochs*per-epoch) rounded up to whole batches."""
    if stage.steps is not None:
        if not isinstance(stage.steps, int) or stage.steps < 1:
            raise MixtureError(f"stage '{stage.name}': steps must be an integer >= 1 or None (got {stage.steps!r})")
        return stage.steps * batch_size
    if not math.isfinite(stage.epochs) or stage.epochs <= 0:
        raise MixtureError(f"stage '{stage.name}': epochs must be finite and > 0 (got {stage.epochs!r})")
    wanted = math.ceil(stage.epochs * sum(stage.counts.values()))
    return math.ceil(wanted / batch_size) * batch_size


def curriculum_plan(stages: list[Stage], batch_size: int, seed: int) -> tuple[list[Draw], list[int]]:
    """The whole training order for ordered stages (curriculum / intermediate fine-tuning).

    Each stage concatenates its epoch plans (epoch 0, 1, ...) and is cut at its draw count, which is always
    a whole number of batches so no batch mixes two stages. Returns (order, boundaries): boundaries[i] is the
    optimizer step (draw index // batch_size) at which stages[i + 1] starts, so len(boundaries) == len(stages) - 1.
    Stage i's epoch plans use a seed derived from (seed, i, stage name).
    """
    _check_batch_size(batch_size)
    if not stages:
        raise MixtureError("stages: a curriculum needs at least one stage")
    order: list[Draw] = []
    boundaries: list[int] = []
    for index, stage in enumerate(stages):
        _check_counts(stage.sizes, stage.counts)
        if sum(stage.counts.values()) == 0:
            raise MixtureError(f"stage '{stage.name}': counts are all 0; a stage must draw at least one example")
        if index:
            boundaries.append(len(order) // batch_size)
        wanted = _stage_draws(stage, batch_size)
        stage_seed = _stage_seed(seed, index, stage.name)
        drawn: list[Draw] = []
        epoch = 0
        while len(drawn) < wanted:
            drawn.extend(epoch_plan(stage.sizes, stage.counts, stage_seed, epoch))
            epoch += 1
        order.extend(drawn[:wanted])
    return order, boundaries


def describe_mix(counts: dict[str, int], sizes: dict[str, int]) -> str:
    """A table to print before training, so the effective mix (and any heavy up-sampling) is visible."""
    _check_counts(sizes, counts)
    total = sum(counts.values())
    rows = [("task", "available", "drawn/epoch", "share", "epochs-equiv")]
    for task in sizes:
        count = counts.get(task, 0)
        share = f"{100 * count / total:.1f}%" if total else "-"
        rows.append((task, str(sizes[task]), str(count), share, f"{count / sizes[task]:.2f}"))
    rows.append(("total", str(sum(sizes.values())), str(total), "100.0%" if total else "-", ""))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [
        "  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip() for r in rows
    ]
    return "\n".join(lines)
