"""Scoring a model on labelled records with the task's metric."""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.data.readers import Record
from tunelab.eval.metrics import classification_metrics, generation_metrics
from tunelab.eval.predict import classify, generate


def evaluate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, records: list[Record], config: RunConfig,
             labels: list[str] | None) -> dict[str, float]:
    """The task's metrics on `records`, plus the number of examples they were computed on."""
    if config.task == "classification":
        predicted = [p["label"] for p in classify(model, tokenizer, records, config, labels)]
        gold = [str(r.fields[config.data.label_field]) for r in records]
        metrics = classification_metrics(gold, predicted, labels)
    else:
        predictions = generate(model, tokenizer, records, config)
        references = [str(r.fields[config.data.response_field]) for r in records]
        metrics = generation_metrics(references, predictions)
    metrics["examples"] = len(records)
    return metrics
