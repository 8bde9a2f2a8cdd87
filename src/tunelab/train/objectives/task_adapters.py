"""task_adapters: one LoRA adapter per task (plus an optional shared one) over a frozen decoder, each single-task
batch routed to its adapter (a mixture)."""

from __future__ import annotations

from dataclasses import replace

import torch

from tunelab.config import METHOD_TRAITS
from tunelab.data.encode import TaskCollator, make_collator
from tunelab.data.taskset import task_specs
from tunelab.methods import TrainableReport, lora
from tunelab.methods.peft_common import name_base_model
from tunelab.methods.task_adapters import (
    SHARED,
    apply_task_adapters,
    load_task_adapters,
    merge_task_adapter,
    route,
    save_task_adapters,
    task_names,
    trainable_by_adapter,
)
from tunelab.models.family import model_family
from tunelab.models.loading import load_base, portable_reference
from tunelab.train.objectives.base import Feed, ObjectiveError
from tunelab.train.objectives.text_to_text import TextToText, packing_of
from tunelab.train.trainer import RoutedCompletionTrainer


class AdaptersOff(torch.nn.Module):
    """The base model inside a task-adapter model (adapters disabled), for tasks that have no adapter."""

    def __init__(self, model):
        super().__init__()
        self.peft, self.config = model, model.config

    def forward(self, *args, **kwargs):
        with self.peft.disable_adapter():
            return self.peft(*args, **kwargs)

    def generate(self, *args, **kwargs):
        with self.peft.disable_adapter():
            return self.peft.generate(*args, **kwargs)


class TaskAdapters(TextToText):
    name = "task_adapters"
    routes_per_task = True
    one_task_per_batch = True  # one adapter per step
    serves_on_shared_base = False  # its adapters are routed per task, not switched as one run's
    trains_data_runs = False

    def check(self, config) -> None:
        traits = METHOD_TRAITS[config.method.name]
        if not (traits.lora_family and not traits.quantized_base) or model_family(config.model) != "decoder":
            raise ObjectiveError(
                "objective 'task_adapters' trains one LoRA adapter per task of a decoder: set method.name: lora and "
                "name a decoder as model.name"
            )

    def adapt(self, model, config, tasks):
        model = apply_task_adapters(
            model, list(tasks.trained), lora.peft_config(config), shared=config.mixture.shared_adapter
        )
        total = sum(p.numel() for p in model.parameters())
        return model, TrainableReport(sum(trainable_by_adapter(model).values()), total)

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        validation = self._validation(config, tasks, tokenizer)
        return Feed(
            self._examples(config, tasks, plan, tokenizer),
            validation or None,
            RoutedCompletionTrainer,
            TaskCollator(make_collator("causal_lm", tokenizer, packing_of(model, config))),
        )

    def save(self, model, config, directory) -> None:
        save_task_adapters(model, directory)
        name_base_model(directory, portable_reference(config.model.name))

    def load_trained(self, config, directory, labels):
        return load_task_adapters(load_base(config, new_head=False), directory)

    def route(self, target, model):
        """Each task answered by its adapter; a task without one by the shared adapter (what generalises), or by
        the base with the adapters off. The base before its adapters (no `peft_config`) answers every task as it is."""
        if not hasattr(model, "peft_config"):
            return None

        def answering(label: str, answerer):
            return replace(target, name=f"{target.name} [{label}]", model=answerer, labels=None, route=None)

        def answer(task: str):
            if task in task_names(model):
                route(model, task)
                return answering(f"{task} adapter", model)
            if SHARED in model.peft_config:
                model.base_model.set_adapter([SHARED])
                return answering("shared adapter", model)
            return answering("adapters off", AdaptersOff(model))

        return answer

    def merge(self, model, config, task):
        """One task's adapter folded into the base."""
        return merge_task_adapter(model, task_specs(config).pick(task).name)
