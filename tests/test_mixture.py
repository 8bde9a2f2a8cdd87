"""Multi-task mixture planning: rates, counts, epoch sampling, batch orders, curricula."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from tunelab.data.mixture import (
    MixtureError,
    Stage,
    balanced_order,
    curriculum_plan,
    describe_mix,
    epoch_plan,
    examples_per_task,
    homogeneous_batches,
    homogeneous_order,
    mixture_rates,
)

SIZES = {"a": 900, "b": 100}


@pytest.mark.parametrize(
    ("strategy", "kwargs", "expected"),
    [
        ("proportional", {}, {"a": 0.9, "b": 0.1}),
        ("capped", {"cap": 200}, {"a": 200 / 300, "b": 100 / 300}),
        ("temperature", {"temperature": 2.0}, {"a": 30 / 40, "b": 10 / 40}),
        ("equal", {}, {"a": 0.5, "b": 0.5}),
        ("proportional", {"weights": {"b": 2.0}}, {"a": 900 / 1100, "b": 200 / 1100}),
        ("equal", {"weights": {"a": 3.0}}, {"a": 0.75, "b": 0.25}),
    ],
)
def test_rates_match_hand_computed_values(strategy, kwargs, expected):
    rates = mixture_rates(SIZES, strategy, **kwargs)
    assert rates == pytest.approx(expected)


def test_temperature_limits():
    sizes = {"a": 5000, "b": 300, "c": 7}
    assert mixture_rates(sizes, "temperature", temperature=1.0) == pytest.approx(mixture_rates(sizes, "proportional"))
    hot = mixture_rates(sizes, "temperature", temperature=1e6)
    assert hot == pytest.approx({t: 1 / 3 for t in sizes}, abs=1e-4)
    assert hot["a"] > hot["b"] > hot["c"]  # still ordered by size, only flattened


def test_examples_per_task_sums_to_total_and_rounds_within_one():
    sizes = {"a": 5000, "b": 100, "c": 40}
    rates = mixture_rates(sizes, "capped", cap=500)  # 500/640, 100/640, 40/640
    counts = examples_per_task(sizes, rates, 1000)
    # ideal 781.25 / 156.25 / 62.5: the one leftover goes to the largest remainder (c)
    assert counts == {"a": 781, "b": 156, "c": 63}
    for total in (1, 7, 99, 1000, 12345):
        counts = examples_per_task(sizes, rates, total)
        assert sum(counts.values()) == total
        assert all(abs(counts[t] - rates[t] * total) < 1 for t in sizes)


def test_examples_per_task_breaks_ties_by_task_name_not_dict_order():
    rates = {"b": 0.5, "a": 0.5}
    assert examples_per_task({"b": 10, "a": 10}, rates, 3) == {"a": 2, "b": 1}


def test_capped_mix_limits_the_big_task():
    sizes = {"a": 5000, "b": 100, "c": 40}
    rates = mixture_rates(sizes, "capped", cap=500)
    counts = examples_per_task(sizes, rates, 1000)
    assert counts["a"] <= math.ceil(500 / 640 * 1000)
    proportional = examples_per_task(sizes, mixture_rates(sizes, "proportional"), 1000)
    assert counts["a"] < proportional["a"]


def test_sampler_matches_rates_over_many_epochs():
    sizes = {"a": 5000, "b": 100, "c": 40}
    rates = mixture_rates(sizes, "capped", cap=500)
    counts = examples_per_task(sizes, rates, 1000)
    seen: dict[str, Counter] = {t: Counter() for t in sizes}
    for epoch in range(200):
        plan = epoch_plan(sizes, counts, seed=3, epoch=epoch)
        assert len(plan) == 1000
        for task, index in plan:
            assert 0 <= index < sizes[task]
            seen[task][index] += 1
    drawn = sum(sum(c.values()) for c in seen.values())
    for task in sizes:
        assert sum(seen[task].values()) / drawn == pytest.approx(rates[task], abs=1e-3)
    # the sub-sampled task is covered uniformly over epochs, not stuck on one subset
    assert len(seen["a"]) == 5000
    mean = 781 * 200 / 5000
    assert all(abs(n - mean) < 6 * math.sqrt(mean) for n in seen["a"].values())
    # the up-sampled tasks: every example each epoch, extras spread over all examples
    assert min(seen["b"].values()) > 200 and len(seen["b"]) == 100
    assert min(seen["c"].values()) > 200 and len(seen["c"]) == 40


def test_no_repeats_when_count_fits_and_even_repeats_when_upsampled():
    sizes = {"a": 50, "b": 4}
    plan = epoch_plan(sizes, {"a": 30, "b": 11}, seed=0)
    per_task = {t: Counter(i for task, i in plan if task == t) for t in sizes}
    assert sum(per_task["a"].values()) == 30 and set(per_task["a"].values()) == {1}
    assert sum(per_task["b"].values()) == 11
    assert sorted(per_task["b"].values()) == [2, 3, 3, 3]  # 11 = 2*4 + 3 extras, each on a different example


def test_epoch_plan_is_deterministic_and_varies_with_seed_and_epoch():
    sizes = {"a": 200, "b": 50}
    counts = {"a": 60, "b": 40}
    plan = epoch_plan(sizes, counts, seed=1, epoch=0)
    assert plan == epoch_plan(sizes, counts, seed=1, epoch=0)
    assert plan == epoch_plan(dict(reversed(sizes.items())), dict(reversed(counts.items())), seed=1, epoch=0)
    assert plan != epoch_plan(sizes, counts, seed=2, epoch=0)
    assert plan != epoch_plan(sizes, counts, seed=1, epoch=1)
    a_examples = {i for t, i in plan if t == "a"}
    assert a_examples != {i for t, i in epoch_plan(sizes, counts, seed=1, epoch=1) if t == "a"}
    tasks = [t for t, _ in plan]
    assert tasks != sorted(tasks) and tasks != sorted(tasks, reverse=True)  # tasks are shuffled together


def _batches(order, size):
    return [order[i : i + size] for i in range(0, len(order), size)]


def test_balanced_order_two_equal_tasks_gives_two_plus_two():
    plan = epoch_plan({"a": 100, "b": 100}, {"a": 40, "b": 40}, seed=5)
    order = balanced_order(plan, 4, seed=5)
    assert sorted(order) == sorted(plan)
    for batch in _batches(order, 4):
        assert Counter(t for t, _ in batch) == {"a": 2, "b": 2}
    assert balanced_order(plan, 4, seed=5) == order
    first_tasks = {balanced_order(plan, 4, seed=s)[0][0] for s in range(10)}
    assert first_tasks == {"a", "b"}  # the task order within batches is seeded, not alphabetical


@pytest.mark.parametrize(("counts", "batch_size"), [({"a": 900, "b": 100}, 10), ({"a": 500, "b": 300, "c": 203}, 8)])
def test_balanced_order_keeps_every_full_batch_near_the_shares(counts, batch_size):
    sizes = {t: 1000 for t in counts}
    plan = epoch_plan(sizes, counts, seed=9)
    order = balanced_order(plan, batch_size, seed=9)
    assert sorted(order) == sorted(plan)
    for task in counts:  # each task keeps its own draws in plan order
        assert [d for d in order if d[0] == task] == [d for d in plan if d[0] == task]
    total = sum(counts.values())
    for batch in _batches(order, batch_size):
        if len(batch) == batch_size:
            got = Counter(t for t, _ in batch)
            assert all(abs(got[t] - batch_size * counts[t] / total) < 1 for t in counts), got


def test_homogeneous_batches_hold_one_task_and_all_draws():
    plan = epoch_plan({"a": 100, "b": 100, "c": 100}, {"a": 23, "b": 16, "c": 9}, seed=4)
    batches = homogeneous_batches(plan, 4, seed=4)
    assert all(len({t for t, _ in batch}) == 1 for batch in batches)
    assert Counter(d for batch in batches for d in batch) == Counter(plan)
    short = [b for b in batches if len(b) < 4]
    assert sorted((b[0][0], len(b)) for b in short) == [("a", 3), ("c", 1)]
    assert homogeneous_order(plan, 4, seed=4) == [d for batch in batches for d in batch]
    task_sequence = [b[0][0] for b in batches]
    assert task_sequence != sorted(task_sequence)  # batches of different tasks are shuffled together
    assert homogeneous_batches(plan, 4, seed=4) == batches
    assert homogeneous_batches(plan, 4, seed=5) != batches


def test_curriculum_switches_stage_exactly_at_the_configured_step():
    stages = [
        Stage("warmup", sizes={"a": 50, "b": 30}, counts={"a": 6, "b": 4}, steps=5),
        Stage("target", sizes={"c": 7}, counts={"c": 10}, steps=None, epochs=1.5),
        Stage("polish", sizes={"a": 50}, counts={"a": 3}, steps=2),
    ]
    order, boundaries = curriculum_plan(stages, batch_size=4, seed=0)
    # warmup: 5*4 = 20 draws; target: ceil(1.5*10) = 15 -> 16 (4 steps); polish: 2*4 = 8
    assert boundaries == [5, 9]
    assert len(order) == 20 + 16 + 8
    assert {t for t, _ in order[:20]} == {"a", "b"}
    assert order[20][0] == "c" and {t for t, _ in order[20:36]} == {"c"}
    assert {t for t, _ in order[36:]} == {"a"}
    # stage epochs are concatenated: the first 10 draws are exactly one warmup epoch
    assert Counter(t for t, _ in order[:10]) == {"a": 6, "b": 4}
    assert len({i for t, i in order[:10] if t == "a"}) == 6
    assert curriculum_plan(stages, batch_size=4, seed=0) == (order, boundaries)
    assert curriculum_plan(stages, batch_size=4, seed=1)[0] != order


def test_curriculum_stages_over_the_same_tasks_draw_differently():
    stage = Stage("s", sizes={"a": 1000}, counts={"a": 8}, steps=2)
    order, boundaries = curriculum_plan([stage, stage], batch_size=4, seed=0)
    assert boundaries == [2]
    assert order[:8] != order[8:]


def test_describe_mix_table():
    table = describe_mix({"a": 750, "b": 250}, {"a": 900, "b": 100})
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()}
    assert rows["task"] == ["available", "drawn/epoch", "share", "epochs-equiv"]
    assert rows["a"] == ["900", "750", "75.0%", "0.83"]
    assert rows["b"] == ["100", "250", "25.0%", "2.50"]
    assert rows["total"] == ["1000", "1000", "100.0%"]


@pytest.mark.parametrize(
    ("sizes", "kwargs", "pattern"),
    [
        (SIZES, {"strategy": "uniform"}, r"strategy 'uniform'.*proportional, capped, temperature, equal"),
        (SIZES, {"strategy": "capped"}, r"cap must be an integer > 0"),
        (SIZES, {"strategy": "capped", "cap": 0}, r"cap must be an integer > 0"),
        (SIZES, {"strategy": "temperature", "temperature": 0.5}, r"temperature must be .* >= 1"),
        (SIZES, {"strategy": "proportional", "cap": 10}, r"cap is only used by strategy 'capped'"),
        (SIZES, {"strategy": "equal", "temperature": 3.0}, r"temperature is only used by strategy 'temperature'"),
        ({"a": 10, "empty": 0}, {"strategy": "proportional"}, r"task 'empty' has 0 training examples"),
        (SIZES, {"strategy": "proportional", "weights": {"b": 0.0}}, r"weights: task 'b' has weight 0.0"),
        (SIZES, {"strategy": "proportional", "weights": {"b": -1.0}}, r"weights: task 'b'.*> 0"),
        (SIZES, {"strategy": "proportional", "weights": {"z": 1.0}}, r"weights: task 'z' is not in the mixture"),
    ],
)
def test_rate_errors_name_the_setting(sizes, kwargs, pattern):
    with pytest.raises(MixtureError, match=pattern):
        mixture_rates(sizes, **kwargs)


def test_planning_errors_name_the_setting():
    with pytest.raises(MixtureError, match=r"counts: task 'z' is not in sizes"):
        epoch_plan({"a": 3}, {"z": 1}, seed=0)
    with pytest.raises(MixtureError, match=r"batch_size must be"):
        balanced_order([("a", 0)], 0, seed=0)
    with pytest.raises(MixtureError, match=r"stage 'x': counts are all 0"):
        curriculum_plan([Stage("x", {"a": 3}, {"a": 0}, steps=1)], batch_size=2, seed=0)
    with pytest.raises(MixtureError, match=r"stage 'x': epochs must be"):
        curriculum_plan([Stage("x", {"a": 3}, {"a": 1}, steps=None, epochs=0.0)], batch_size=2, seed=0)
