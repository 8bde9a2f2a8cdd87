"""classifier: an encoder with one classification head, tuned by any method (a `data:` classification run)."""

from __future__ import annotations

from transformers import DataCollatorWithPadding

from tunelab.train.objectives.base import Feed, Objective, encoded_examples
from tunelab.train.trainer import PlannedTrainer, accuracy_from_logits


class Classifier(Objective):
    name = "classifier"
    base_note = (
        "Base = the pretrained encoder with its new, untrained classification head: chance level by construction."
    )
    answers_by_head = True
    trains_mixtures = False  # one head: a mixture's classification tasks train with multi_head
    serves_on_shared_base = True
    default_best_metric = "accuracy"
    metrics_from_predictions = staticmethod(accuracy_from_logits)

    def validation_metrics(self, config) -> list[str]:
        return ["accuracy", "loss"]

    def feed(self, model, config, tasks, plan, tokenizer) -> Feed:
        (task,) = tasks.trained.values()
        train = encoded_examples("classification", task.train, tokenizer, config.data, tasks.labels, "train")
        validation = encoded_examples(
            "classification", task.validation, tokenizer, config.data, tasks.labels, "validation"
        )
        return Feed(
            [train[index] for _, index in plan.order], validation, PlannedTrainer, DataCollatorWithPadding(tokenizer)
        )
