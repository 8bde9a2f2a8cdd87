"""What an objective is: one way of training a model, and every step of a run's life that depends on it.

An objective says how to load the model before tuning (which the base scores use), how to adapt it, how to turn
the planned draws into training examples and validation sets, which trainer, collator and loss train it, how
validation picks the best checkpoint, how to save it, how to load the trained run back, how the trained model
answers each task, how to merge it into one plain model, and what the card says the base scores mean. The rest of
tunelab asks the run's objective (`tunelab.train.objectives.objective_of`) and never compares its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch import nn
from transformers import Trainer

from tunelab.config import METHOD_TRAITS, DataConfig, RunConfig
from tunelab.data.cache import encode_cached
from tunelab.data.plan import Plan
from tunelab.data.taskset import TaskSet
from tunelab.errors import TunelabError
from tunelab.kinds import kind_named, kind_of_run
from tunelab.kinds.base import Family
from tunelab.methods import TrainableReport, apply_method, base_load_options, method_module
from tunelab.methods.peft_common import name_base_model
from tunelab.models.family import model_family
from tunelab.models.loading import load_base, load_model, portable_reference
from tunelab.records import Record
from tunelab.runs import RunDir
from tunelab.tasks import load_task


class ObjectiveError(TunelabError, ValueError):
    """An objective that cannot be registered or found, with what to do instead."""


@dataclass
class Feed:
    """What the trainer reads: examples in plan order, validation sets, the trainer class and the collator."""

    train: list[dict]
    validation: list[dict] | dict[str, list[dict]] | None
    trainer_class: type[Trainer]
    collator: Callable


def encoded_examples(
    kind: str,
    family: Family,
    records: list[Record],
    tokenizer,
    data: DataConfig,
    labels: list[str] | None,
    name: str,
) -> list[dict]:
    """Token ids of records, tokenised once and then read from the token cache while data and tokenizer stay the same."""
    encoded, cached = encode_cached(kind, family, records, tokenizer, data, labels)
    if cached:
        print(f"{name}: {len(records)} examples read from the token cache")
    if encoded.truncated:
        answers = f" / data.max_target_length={data.max_target_length}" if kind_named(kind).cuts_answers else ""
        print(
            f"{name}: {encoded.truncated} of {len(records)} examples truncated to data.max_length={data.max_length}"
            f"{answers}"
        )
    return encoded.examples


def one_or_per_task(sets: dict[str, list[dict]]) -> list[dict] | dict[str, list[dict]] | None:
    """One task's validation set as a plain list (eval_loss, eval_accuracy), several as a dict (eval_<task>_loss)."""
    sets = {name: rows for name, rows in sets.items() if rows}
    if not sets:
        return None
    return next(iter(sets.values())) if len(sets) == 1 else sets


REQUIRED_ATTRIBUTES = ("name", "base_note")
"""What every objective must set itself; everything else has a default below."""


class Objective(ABC):
    """One way of training. A subclass sets `name` and `base_note`, writes `feed`, and overrides what differs."""

    name: str
    """The name a config chooses it by (`objective:`), or a kind of example names as its own (`Kind.objective`)."""
    base_note: str
    """The model card's line on what the base model's scores are the scores of."""
    answers_by_head: bool = False
    """It answers through a classification head, reading no prompt (else it generates text after a prompt)."""
    scores_answers: bool = False
    """Its head gives one number for a prompt and an answer (a reward model), not a label: it is scored, predicts
    and serves scores (`tunelab.eval.rewards`)."""
    routes_per_task: bool = False
    """Each task is answered its own way (a head, an adapter): served as one model id per task."""
    one_task_per_batch: bool = False
    """Every training batch holds one task's examples (what the plan must make)."""
    keeps_best_checkpoint: bool = True
    """The Trainer can return to a one-task run's best checkpoint at the end (it cannot reload every model)."""
    serves_on_shared_base: bool = False
    """A run of it that saved one PEFT adapter can share a served base with other adapter runs of that base."""
    trains_data_runs: bool = True
    """A `data:` run (one task, its kind of example from data.kind) can train with it."""
    trains_mixtures: bool = True
    """A mixture of tasks can train with it."""
    default_best_metric: str = "loss"
    """The validation metric that picks the best checkpoint unless `training.metric_for_best` names one."""
    metrics_from_predictions: Callable | None = None
    """The validation metrics computed from the model's predictions (the Trainer then keeps them); None when
    validation measures the loss only."""

    def check(self, config: RunConfig) -> None:
        """Refuse, before any data or model loads, a run this objective cannot train, naming the key to change
        (`ObjectiveError`); `tunelab.resolve.check_config` asks it after the checks every objective shares."""

    def load(self, config: RunConfig, tasks: TaskSet, precision: str) -> nn.Module:
        """The model before tuning, as training wants it stored (a frozen base may be bf16)."""
        return load_base(config, tasks.labels, **base_load_options(config, precision))

    def adapt(self, model: nn.Module, config: RunConfig, tasks: TaskSet) -> tuple[nn.Module, TrainableReport]:
        return apply_method(model, config)

    @abstractmethod
    def feed(self, model: nn.Module, config: RunConfig, tasks: TaskSet, plan: Plan, tokenizer) -> Feed:
        """The planned draws as training examples, the validation sets, and the trainer and collator to read them."""

    def complete_feed(self, feed: Feed, model: nn.Module, config: RunConfig, run: RunDir) -> Feed:
        """The feed with what it needs from the untuned model or the run directory, once the run's directory exists
        (a preference run's reference log-probabilities, kept there for a resume); the feed as it is by default."""
        return feed

    def learning_rate(self, config: RunConfig) -> float:
        """The learning rate to train with: the configured one, or the method's measured default as the run's kind
        of example picks it (a mixture: the rate for a trained head when this objective answers by one)."""
        if config.training.learning_rate is not None:
            return config.training.learning_rate
        rates = METHOD_TRAITS[config.method.name].learning_rates
        if config.mixture is None:
            return kind_of_run(config).learning_rate(rates)
        return rates.with_head if self.answers_by_head else rates.generative

    def best_metric(self, config: RunConfig) -> str:
        """The validation metric that selects the best checkpoint."""
        return config.training.metric_for_best or self.default_best_metric

    def validation_metrics(self, config: RunConfig) -> list[str]:
        """What the run's validation logs, without `eval_`: the loss, or one loss per task for a mixture of several
        tasks (what a sweep may optimise)."""
        if config.mixture is None:
            return ["loss"]
        stages = config.mixture.stage_list()
        tasks = list(dict.fromkeys(load_task(entry.task).name for stage in stages for entry in stage.tasks))
        return [f"{task}_loss" for task in tasks] if len(tasks) > 1 else ["loss"]

    def save(self, model: nn.Module, config: RunConfig, directory: Path) -> None:
        """Write what the method trained; a PEFT adapter names its base as another machine finds it."""
        method_module(config.method.name).save(model, directory)
        name_base_model(directory, portable_reference(config.model.name))

    def load_trained(self, config: RunConfig, directory: Path, labels: list[str] | None) -> nn.Module:
        """The tuned model from what `save` wrote: a full fine-tune is its own checkpoint; every other method is
        rebuilt from a fresh base, loaded in full precision (also for qlora), and what it saved."""
        method = method_module(config.method.name)
        if getattr(method, "SAVES_WHOLE_MODEL", False):
            base = load_model(str(directory), model_family(config.model), labels)
        else:
            base = load_base(config, labels, new_head=False)
        return method.load(base, directory)

    def route(self, target, model: nn.Module) -> Callable | None:
        """How the trained `model`, answering as `target` (a `tunelab.eval.targets.Target`), answers one task: a
        function from a task name to the Target that answers it, or None when the model answers every task as it is."""
        return None

    def merge(self, model: nn.Module, config: RunConfig, task: str | None) -> nn.Module:
        """The trained model as one plain transformers model with its update folded in (the method's merge)."""
        return method_module(config.method.name).merge(model)
