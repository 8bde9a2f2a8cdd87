"""Scoring a model on labelled records with the task's metric: fractions for the run's own eval.json, or every
metric with its bootstrap interval, as a suite task reports it, for `tunelab eval RUN --data FILE`."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.readers import Record
from tunelab.eval.bootstrap import bootstrap_ci
from tunelab.eval.metrics import classification_metrics, generation_metrics, get_metric
from tunelab.eval.predict import classify, generate
from tunelab.eval.runner import TaskResult

RECORD_METRICS = {
    "classification": ["accuracy", "f1_macro", "precision_macro", "recall_macro"],
    "generation": ["rougeL", "rouge1", "rouge2", "exact_match"],
}
"""What a run's labelled records are scored with, the first being the primary metric (as in eval.json)."""


def _answers(model, tokenizer, records: list[Record], config: RunConfig, labels) -> tuple[list[str], list[str]]:
    """(predictions, references): predicted labels and gold labels, or generated texts and reference texts."""
    if config.task == "classification":
        predicted = [p["label"] for p in classify(model, tokenizer, records, config, labels)]
        return predicted, [str(r.fields[config.data.label_field]) for r in records]
    return generate(model, tokenizer, records, config), [str(r.fields[config.data.response_field]) for r in records]


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig,
             labels: list[str] | None) -> dict[str, float]:
    """The task's metrics on `records`, plus the number of examples they were computed on."""
    predictions, references = _answers(model, tokenizer, records, config, labels)
    if config.task == "classification":
        metrics = classification_metrics(references, predictions, labels)
    else:
        metrics = generation_metrics(references, predictions)
    metrics["examples"] = len(records)
    return metrics


def score_records(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig,
                  labels: list[str] | None, name: str, samples: int = 1000, seed: int = 0) -> TaskResult:
    """The run's metrics on labelled records, each with its bootstrap 95% interval: the result a suite task gives."""
    kind = "classification" if config.task == "classification" else "generation"
    predictions, references = _answers(model, tokenizer, records, config, labels)
    scores = {metric: bootstrap_ci(get_metric(metric), predictions, references, samples=samples, seed=seed)
              for metric in RECORD_METRICS[kind]}
    return TaskResult(name, kind, len(records), scores, predictions, references, outputs=list(predictions))
