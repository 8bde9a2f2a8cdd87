"""Objectives: one registered per way of training, registering one is one checked call, and the code outside
train/ asks a run's objective instead of comparing its name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from transformers import Trainer

from tunelab.config import build_config
from tunelab.train import objectives
from tunelab.train.objectives import Feed, Objective, ObjectiveError, objective_of, register_objective

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "tunelab"


class Toy(Objective):
    """A way of training defined here, outside the package: what a new objective has to write."""

    name = "toy"
    base_note = "Base = the toy model before tuning."

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        return Feed([], None, Trainer, list)


@pytest.fixture
def registry(monkeypatch) -> dict[str, Objective]:
    """The registry, restored after the test: a toy objective registered in one test is gone in the next."""
    monkeypatch.setattr(objectives, "OBJECTIVES", dict(objectives.OBJECTIVES))
    return objectives.OBJECTIVES


def test_registering_an_objective_is_one_call(registry):
    toy = register_objective(Toy)
    assert registry["toy"] is toy and isinstance(toy, Toy)
    config = build_config({})
    assert not toy.answers_by_head and not toy.routes_per_task and not toy.one_task_per_batch
    assert toy.best_metric(config) == "loss" and toy.validation_metrics(config) == ["loss"]


def test_a_second_objective_of_a_registered_name_is_refused(registry):
    register_objective(Toy)
    with pytest.raises(ObjectiveError, match="named 'toy', which Toy is registered as already; give it another name"):
        register_objective(Toy)

    class Impostor(Toy):
        name = "classifier"

    with pytest.raises(ObjectiveError, match="named 'classifier', which Classifier is registered as already"):
        register_objective(Impostor)
    assert type(registry["classifier"]).__name__ == "Classifier"


def test_an_incomplete_objective_is_refused_saying_what_it_lacks(registry):
    class NoFeed(Objective):
        name = "no_feed"
        base_note = "Base = nothing."

    class Nameless(Toy):
        name = ""
        base_note = None

    with pytest.raises(ObjectiveError, match=r"objective .*NoFeed is incomplete: define feed \("):
        register_objective(NoFeed)
    with pytest.raises(ObjectiveError, match=r"objective .*Nameless is incomplete: define name, base_note \("):
        register_objective(Nameless)
    with pytest.raises(ObjectiveError, match="the class itself, not an instance"):
        register_objective(Toy())
    assert "no_feed" not in registry and "" not in registry


@pytest.mark.parametrize(
    "settings, name, by_head",
    [
        ({}, "classifier", True),
        ({"task": "seq2seq", "data": {"prompt_field": "q"}}, "text_to_text", False),
        ({"task_type": "language_modeling", "data": {"text_field": "body"}}, "language_model", False),
        (
            {"task": "classification", "method": {"name": "full"}, "mixture": {"architecture": "multi_head"}},
            "multi_head",
            True,
        ),
        (
            {"task": "causal_lm", "method": {"name": "lora"}, "mixture": {"architecture": "task_adapters"}},
            "task_adapters",
            False,
        ),
    ],
)
def test_every_run_has_its_objective(settings, name, by_head):
    if "mixture" in settings:
        settings["mixture"]["tasks"] = [{"task": "sst2"}, {"task": "rte"}]
    objective = objective_of(build_config(settings))
    assert objective.name == name and objective.answers_by_head == by_head


def _name_comparisons(path: Path) -> list[str]:
    """Where a module compares `x.architecture()` or `x.architecture` (or a variable it assigned one to) with a
    string or a tuple of strings."""
    tree = ast.parse(path.read_text(encoding="utf-8"))

    def is_read(node: ast.expr) -> bool:
        node = node.func if isinstance(node, ast.Call) else node
        return isinstance(node, ast.Attribute) and node.attr == "architecture"

    holders = set()  # variables that hold the name: `architecture = config.architecture()`, also in a tuple
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                pairs = (
                    zip(target.elts, node.value.elts)
                    if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple)
                    else [(target, node.value)]
                )
                holders |= {t.id for t, v in pairs if isinstance(t, ast.Name) and is_read(v)}

    def is_name(node: ast.expr) -> bool:
        return is_read(node) or (isinstance(node, ast.Name) and node.id in holders)

    def is_text(node: ast.expr) -> bool:
        items = node.elts if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else [node]
        return all(isinstance(item, ast.Constant) and isinstance(item.value, str) for item in items)

    return [
        f"{path.relative_to(PACKAGE)}:{node.lineno}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Compare)
        and any(is_name(o) for o in [node.left, *node.comparators])
        and any(is_text(o) for o in [node.left, *node.comparators])
    ]


NAME_COMPARED_UNTIL_THE_VOCABULARY_STEP = {"config/run.py", "data/report.py"}
"""Below train/, so they cannot ask an objective: the config's own validation of `mixture.architecture`, and the
data report's note on multi-head labels. Issue 30's vocabulary step (and the kinds of example) move them."""


def test_no_module_outside_train_compares_the_objective_name():
    found = [
        hit
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.relative_to(PACKAGE).parts[0] != "train"
        and str(path.relative_to(PACKAGE)) not in NAME_COMPARED_UNTIL_THE_VOCABULARY_STEP
        for hit in _name_comparisons(path)
    ]
    assert found == [], f"ask the run's objective (tunelab.train.objectives.objective_of) instead: {found}"
