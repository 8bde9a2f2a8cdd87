"""multi_head: one shared encoder with a classification head per task (a mixture; full fine-tuning)."""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from tunelab.data.encode import HeadCollator
from tunelab.data.taskset import TrainingTask, task_specs
from tunelab.methods import TrainableReport
from tunelab.models.loading import resolve_source
from tunelab.models.multihead import MultiHeadClassifier, build_multihead
from tunelab.records import Record
from tunelab.train.objectives.base import Feed, Objective, ObjectiveError, encoded_examples, one_or_per_task
from tunelab.train.trainer import PlannedTrainer


class TaskView(torch.nn.Module):
    """One task's head of a multi-head model, shaped like a sequence classifier for the shared evaluation code."""

    def __init__(self, model: MultiHeadClassifier, task: str):
        super().__init__()
        self.model, self.task, self.config = model, task, model.config

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        return SequenceClassifierOutput(
            logits=self.model.predict(input_ids, attention_mask, self.task, token_type_ids)
        )


class MultiHead(Objective):
    name = "multi_head"
    base_note = "Base = the pretrained encoder with its new, untrained heads. Held-out tasks were never trained on."
    answers_by_head = True
    routes_per_task = True
    keeps_best_checkpoint = False  # the Trainer cannot reload a multi-head checkpoint as its best
    default_best_metric = "accuracy"
    trains_data_runs = False

    def check(self, config) -> None:
        if config.method.name != "full":
            raise ObjectiveError(
                "objective 'multi_head' fine-tunes a shared encoder and its classification heads: set "
                "method.name: full"
            )
        if config.training.early_stopping_patience:
            raise ObjectiveError(
                "training.early_stopping_patience needs a best checkpoint, and a multi-head model keeps its last "
                "weights; drop it for this run"
            )

    def load(self, config, tasks, precision):
        """The shared encoder with fresh, seeded heads: its untrained heads are the base scores' model."""
        heads = {name: list(task.spec.label_words) for name, task in tasks.trained.items()}
        return build_multihead(
            resolve_source(config.model.name, config.model.revision), heads, seed=config.training.seed
        )

    def adapt(self, model, config, tasks):
        total = sum(p.numel() for p in model.parameters())
        return model, TrainableReport(total, total)

    def _head_examples(
        self, config, task: TrainingTask, records: list[Record], task_id: int, weight: float, tokenizer, name: str
    ) -> list[dict]:
        for record in records:
            task.spec.label_of(record)  # an unknown label is an error naming the record
        data = task.spec.data_config(config.data.max_length)
        examples = encoded_examples("classification", records, tokenizer, data, list(task.spec.label_words), name)
        return [{**e, "task_ids": task_id, "loss_weights": weight} for e in examples]

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        names = list(tasks.trained)
        encoded = {
            n: self._head_examples(config, t, t.train, names.index(n), t.loss_weight, tokenizer, f"{n} train")
            for n, t in tasks.trained.items()
        }
        validation = {
            n: self._head_examples(config, t, t.validation, names.index(n), 1.0, tokenizer, f"{n} validation")
            for n, t in tasks.trained.items()
        }
        return Feed(
            [encoded[task][index] for task, index in plan.order],
            one_or_per_task(validation),
            PlannedTrainer,
            HeadCollator(tokenizer),
        )

    def save(self, model, config, directory) -> None:
        model.save(directory)

    def load_trained(self, config, directory, labels):
        return MultiHeadClassifier.load(directory)

    def route(self, target, model):
        """Each task answered by its own head; a task without one cannot be answered, and says so."""

        def answer(task: str):
            if task not in model.tasks:
                return replace(
                    target,
                    model=model,
                    labels=[],
                    route=None,
                    unavailable=f"{target.name} has heads for {', '.join(model.task_names)} only, not {task}",
                )
            return replace(
                target,
                name=f"{target.name} [{task} head]",
                model=TaskView(model, task),
                labels=model.tasks[task],
                route=None,
            )

        return answer

    def merge(self, model, config, task):
        """One task's head on the shared encoder, as a standalone sequence classifier."""
        return model.as_classifier(task_specs(config).pick(task).name)
