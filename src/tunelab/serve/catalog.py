"""What a server serves: each TARGET (a run directory, a registry name or a model folder) becomes one or more
`model` ids, loaded once.

Runs whose PEFT adapters were trained from the same base (same model, task type, labels and adapter type)
share one copy of it: the first run's adapter is loaded with PEFT, the others are added to the same model, and
a request switches to its adapter. A generator's base is listed too and answers with the adapters switched off; a
classifier's is not: with its adapters off, its head is the untrained one it was given before training.
A multi-task run is one id per task (`RUN:TASK`), answered by that task's head or adapter. Everything else
(full fine-tunes, bottleneck adapters, head or bias deltas, plain models) is its own model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.config import METHOD_TRAITS
from tunelab.data.taskset import task_specs
from tunelab.errors import TunelabError
from tunelab.eval.targets import Target, load_target, trained_target
from tunelab.methods import method_module
from tunelab.models.loading import load_base, load_tokenizer
from tunelab.runs import RunDir
from tunelab.tasks import TaskSpec
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run


class CatalogError(TunelabError, ValueError):
    """A TARGET that cannot be served, with what to give instead."""


@dataclass
class Served:
    """One `model` id: what answers it, and what a request for it may send."""

    id: str
    kind: str
    """'generate' (chat and completions), 'classify' or 'score' (a reward model)."""
    decoder_only: bool
    answering: Callable[[], AbstractContextManager[Target]]
    """A factory called once per batch: the context it opens puts the shared model into this id's state (its
    adapter, its task's route) while it is open."""
    tokenizer: object
    tasks: dict[str, TaskSpec] = field(default_factory=dict)
    """The run's trained tasks: their templates, filled from a request's `record`, and a classifier's text fields."""
    owned_by: str = "tunelab"
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        """Refuse a context in place of a factory at load time: `@contextmanager`'s contexts are callable
        (as decorators), so one given here would only fail, as a 500, on the first request."""
        if isinstance(self.answering, AbstractContextManager) or not callable(self.answering):
            raise TypeError(
                f"model '{self.id}': answering must be a function returning a context, "
                f"not {type(self.answering).__name__}"
            )

    def task(self, name: str | None) -> TaskSpec:
        """The task whose template or fields a request uses: the one the run trained, or the one it names."""
        if name is None and len(self.tasks) == 1:
            return next(iter(self.tasks.values()))
        if name in self.tasks:
            return self.tasks[name]
        known = ", ".join(self.tasks) or "none: send a prompt or messages instead"
        raise CatalogError(
            f"model '{self.id}' "
            + (f"has no task '{name}'" if name else "was trained on several tasks; name one with 'task'")
            + f" (its tasks: {known})"
        )


def _fixed(target: Target) -> Callable[[], AbstractContextManager[Target]]:
    """A model that answers as it is, with nothing to switch."""
    return lambda: nullcontext(target)


def _adapter(target: Target, adapter: str | None, tokenizer=None) -> Callable[[], AbstractContextManager[Target]]:
    """A shared PEFT model switched to one adapter (answering with that run's own tokenizer: its chat template and
    the EOS its turns close with), or with its adapters off for the base."""
    answering = target if tokenizer is None else replace(target, tokenizer=tokenizer)

    @contextmanager
    def switched() -> Iterator[Target]:
        if adapter is None:
            with target.model.disable_adapter():
                yield answering
        else:
            target.model.set_adapter(adapter)
            yield answering

    return switched


def _routed(target: Target, task: str) -> Callable[[], AbstractContextManager[Target]]:
    """A multi-task model routed to one task (its head or adapter) for the batch."""
    return lambda: nullcontext(target.for_task(task))


def _kind(target: Target) -> tuple[str, bool]:
    """How a target answers: ('generate', 'classify' or 'score', whether it is a decoder that generates after its
    prompt)."""
    return ("score" if target.reward else "generate" if target.generates else "classify"), target.decoder


def _shared_key(run: RunDir, config, labels) -> tuple | None:
    """What a run's adapter can share a base with, or None when the run is not one PEFT adapter on a base (its
    method's row in METHOD_TRAITS says whether it saves one)."""
    if not objective_of(config).serves_on_shared_base or not METHOD_TRAITS[config.method.name].peft_adapter:
        return None
    peft_type = json.loads((run.model_dir / "adapter_config.json").read_text(encoding="utf-8"))["peft_type"]
    return (config.model.name, config.model.revision, config.data.kind, tuple(labels or ()), peft_type)


class Catalog:
    """The served model ids, in the order given."""

    def __init__(self) -> None:
        self.models: dict[str, Served] = {}
        self._shared: dict[tuple, Target] = {}

    def _add(self, served: Served) -> None:
        if served.id in self.models:
            raise CatalogError(f"two targets are served as '{served.id}'; name them with NAME=TARGET")
        self.models[served.id] = served

    def _add_adapter_run(self, model_id: str, run: RunDir, config, labels, key: tuple, tasks: dict) -> None:
        shared = self._shared.get(key)
        if shared is None:
            method = method_module(config.method.name)
            model = method.load(load_base(config, labels, new_head=False), run.model_dir, adapter_name=model_id)
            model.eval()
            shared = trained_target(model, load_tokenizer(str(run.model_dir)), config, labels, config.model.name)
            self._shared[key] = shared
            if shared.generates and config.model.name not in self.models:  # the base, with its adapters off
                self._add(Served(config.model.name, *_kind(shared), _adapter(shared, None), shared.tokenizer, tasks))
        else:
            shared.model.load_adapter(run.model_dir, adapter_name=model_id)
            shared.model.eval()
        tokenizer = load_tokenizer(str(run.model_dir))  # runs on one base may differ in chat template and EOS
        switched = _adapter(shared, model_id, tokenizer)
        self._add(Served(model_id, *_kind(shared), switched, tokenizer, tasks, str(run.path)))

    def add_run(self, model_id: str, run: RunDir) -> None:
        state = run.require_complete()
        config, labels = run.config(), state.get("labels")
        run_tasks = task_specs(config, labels)
        tasks = {name: run_tasks.specs[name] for name in run_tasks.trained}
        key = _shared_key(run, config, labels)
        if key is not None:
            self._add_adapter_run(model_id, run, config, labels, key, tasks)
            return
        loaded = load_run(run)
        target = trained_target(loaded.model, loaded.tokenizer, config, labels, model_id)
        if objective_of(config).routes_per_task:
            for task, spec in tasks.items():
                routed = _routed(target, task)
                with routed() as answering:
                    kind = _kind(answering)
                self._add(Served(f"{model_id}:{task}", *kind, routed, target.tokenizer, {task: spec}, str(run.path)))
            return
        self._add(Served(model_id, *_kind(target), _fixed(target), target.tokenizer, tasks, str(run.path)))

    def add_model(self, model_id: str, reference: str) -> None:
        target = load_target(reference)
        self._add(Served(model_id, *_kind(target), _fixed(target), target.tokenizer))

    def add_base(self, run: RunDir) -> str:
        """Serve the model `run` was tuned from, under its `model.name`, with the run's tasks, so a record fills
        the same prompt template for both; returns that id. An adapter run's base is already served (the shared
        model with its adapters off), and a run tuned from an earlier run has that run as its base."""
        config = run.config()
        base = config.model.name
        if base not in self.models:
            if (Path(base) / "run.json").exists():
                self.add_run(base, RunDir(base))
            else:
                run_tasks = task_specs(config, run.require_complete().get("labels"))
                target = load_target(base)
                tasks = {name: run_tasks.specs[name] for name in run_tasks.trained}
                self._add(Served(base, *_kind(target), _fixed(target), target.tokenizer, tasks))
        return base

    def add(self, item: str) -> None:
        """`[NAME=]TARGET`: a run directory, a registry name, a model folder or a hub id."""
        name, sep, reference = item.partition("=")
        if not sep:
            name, reference = "", item
        if (Path(reference) / "run.json").exists():
            self.add_run(name or Path(reference.rstrip("/")).name, RunDir(reference))
        else:
            self.add_model(name or reference, reference)


def load_catalog(targets: list[str]) -> Catalog:
    """Load every target; runs sharing a base load it once."""
    if not targets:
        raise CatalogError("give at least one TARGET: a run directory, a registry name or a model folder")
    catalog = Catalog()
    for item in targets:
        print(f"loading {item} ...", flush=True)
        catalog.add(item)
    return catalog
