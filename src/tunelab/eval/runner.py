"""Scoring one target on one task: prompts -> answers -> parsed predictions -> metrics with bootstrap intervals.

Every report (suites, forgetting, robustness, bias) is built from `run_task`, so a metric means the same
thing everywhere. The result keeps the parsed predictions and references, which is what paired comparisons
(base vs tuned, clean vs perturbed) resample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from tunelab.config import DataConfig, RunConfig, TrainingConfig
from tunelab.data.encode import decoder_prompt_ids
from tunelab.data.readers import Record
from tunelab.eval.bootstrap import Interval, bootstrap_ci
from tunelab.eval.generate import generate_texts
from tunelab.eval.metrics import get_metric, match_label, unmatched_share
from tunelab.eval.predict import classify
from tunelab.eval.targets import Target
from tunelab.tasks import TaskSpec, parse_entities


@dataclass
class TaskResult:
    task: str
    kind: str
    examples: int
    scores: dict[str, Interval] = field(default_factory=dict)
    predictions: list = field(default_factory=list)
    """What the metrics read: labels (None = matched no label), texts, tag lists, or (nll, tokens) pairs."""
    references: list = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    """The model's raw answers (generated text, or the predicted label of a classifier)."""
    unmatched: float | None = None
    """Generative classification: share (0-100) of answers that named no label."""
    skipped: str | None = None
    """Why the target cannot do this task; no scores then."""

    def as_dict(self) -> dict:
        result = {"kind": self.kind, "examples": self.examples}
        if self.skipped:
            return {**result, "skipped": self.skipped}
        result["metrics"] = {name: interval.as_dict() for name, interval in self.scores.items()}
        if self.unmatched is not None:
            result["unmatched_share"] = self.unmatched
        return result


def skip_reason(target: Target, spec: TaskSpec) -> str | None:
    """Why `target` cannot be scored on `spec`, or None when it can."""
    if not target.generates:
        if spec.kind != "classification":
            return f"{target.name} is a classifier; it cannot answer a {spec.kind} task"
        if set(target.labels or []) != set(spec.label_words):
            return (f"{target.name} predicts labels {target.labels}, task {spec.name} has {sorted(spec.label_words)}")
        if not 1 <= len(spec.input_fields) <= 2:
            return f"a classifier reads one text or a text pair; task {spec.name} has inputs {spec.input_fields}"
    elif spec.kind == "language_modeling" and target.task != "causal_lm":
        return "perplexity is computed for decoder models only"
    return None


def _positions(target: Target) -> int:
    """The longest sequence the model takes: its position table, or our cap for models without one (T5)."""
    return min(target.max_length, getattr(target.model.config, "max_position_embeddings", None) or target.max_length)


def prompt_ids(target: Target, prompt: str, max_new_tokens: int) -> list[int]:
    """Prompt ids that leave room for the answer within the model's positions."""
    if target.task == "causal_lm":
        return decoder_prompt_ids(prompt, target.tokenizer, max(8, _positions(target) - max_new_tokens))[0]
    return target.tokenizer(prompt, truncation=True, max_length=_positions(target))["input_ids"]


def _answers(target: Target, spec: TaskSpec, records: list[Record]) -> list[str]:
    prompts = [prompt_ids(target, spec.prompt(record), spec.max_new_tokens) for record in records]
    return generate_texts(target.model, target.tokenizer, prompts, decoder_only=target.task == "causal_lm",
                          batch_size=target.batch_size, max_new_tokens=spec.max_new_tokens, stop=spec.stop)


def _classifier_labels(target: Target, spec: TaskSpec, records: list[Record]) -> list[str]:
    data = DataConfig(text_field=spec.input_fields[0], text_pair_field=(spec.input_fields[1:] or [None])[0],
                      max_length=_positions(target))
    config = RunConfig(task="classification", data=data, training=TrainingConfig(eval_batch_size=target.batch_size))
    return [p["label"] for p in classify(target.model, target.tokenizer, records, config, target.labels)]


@torch.inference_mode()
def _text_nll(target: Target, text: str, window: int, stride: int) -> tuple[float, int]:
    """Summed next-token NLL of a text and how many tokens it covers, with a sliding window for long texts
    (each window scores only the tokens the previous one did not, with up to window - stride tokens of context)."""
    ids = target.tokenizer(text, return_tensors="pt")["input_ids"][0].to(target.model.device)
    total, count, scored_to = 0.0, 0, 1  # the first token has no context and is never scored
    for end in range(min(window, len(ids)), len(ids) + stride, stride):
        end = min(end, len(ids))
        start = max(0, end - window)
        logits = target.model(input_ids=ids[start:end].unsqueeze(0)).logits[0, :-1].float()
        log_probs = logits.log_softmax(-1).gather(-1, ids[start + 1 : end].unsqueeze(-1)).squeeze(-1)
        fresh = log_probs[scored_to - start - 1 :]
        total -= float(fresh.sum())
        count += len(fresh)
        scored_to = end
        if end == len(ids):
            break
    return total, count


def _nll_pairs(target: Target, spec: TaskSpec, records: list[Record]) -> list[tuple[float, int]]:
    window = _positions(target)
    return [_text_nll(target, str(r.fields[spec.text_field]), window, max(1, window // 2)) for r in records]


def predictions_for(target: Target, spec: TaskSpec, records: list[Record]) -> tuple[list, list, list[str]]:
    """(metric predictions, metric references, raw outputs) of `target` on `records`."""
    if spec.kind == "language_modeling":
        pairs = _nll_pairs(target, spec, records)
        return pairs, [None] * len(pairs), [f"nll={n:.3f} tokens={c} ppl={math.exp(n / max(c, 1)):.2f}" for n, c in pairs]
    if spec.kind == "classification":
        references = [spec.label_of(r) for r in records]
        if not target.generates:
            labels = _classifier_labels(target, spec, records)
            return labels, references, labels
        outputs = _answers(target, spec, records)
        return [match_label(o, spec.label_words) for o in outputs], references, outputs
    outputs = _answers(target, spec, records)
    if spec.kind == "ner":
        predictions = [parse_entities(o, list(map(str, r.fields[spec.tokens_field]))) for o, r in zip(outputs, records)]
        return predictions, [list(map(str, r.fields[spec.tags_field])) for r in records], outputs
    return outputs, [spec.reference_of(r) for r in records], outputs


def score(spec: TaskSpec, predictions: list, references: list, samples: int = 1000, seed: int = 0) -> dict[str, Interval]:
    """Every metric of the task, each with its bootstrap interval over the examples."""
    return {name: bootstrap_ci(get_metric(name), predictions, references, samples=samples, seed=seed) for name in spec.metrics}


def run_task(target: Target, spec: TaskSpec, records: list[Record], samples: int = 1000, seed: int = 0) -> TaskResult:
    """Score `target` on `records` of task `spec`, or say why it cannot be scored."""
    result = TaskResult(spec.name, spec.kind, len(records))
    result.skipped = skip_reason(target, spec)
    if result.skipped:
        return result
    result.predictions, result.references, result.outputs = predictions_for(target, spec, records)
    result.scores = score(spec, result.predictions, result.references, samples, seed)
    if spec.kind == "classification" and target.generates:
        result.unmatched = unmatched_share(result.predictions)
    return result
