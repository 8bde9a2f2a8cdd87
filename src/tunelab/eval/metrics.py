"""Task metrics, computed by the well-kept libraries: scikit-learn for classification, rouge-score for ROUGE."""

from __future__ import annotations

import re
import string

from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, precision_recall_fscore_support


def classification_metrics(gold: list[str], predicted: list[str], labels: list[str]) -> dict[str, float]:
    """Accuracy and macro precision/recall/F1 over the full label set."""
    precision, recall, f1, _ = precision_recall_fscore_support(gold, predicted, labels=labels, average="macro", zero_division=0)
    return {
        "accuracy": float(accuracy_score(gold, predicted)),
        "precision_macro": float(precision),
        "recall_macro": float(recall),
        "f1_macro": float(f1),
    }


def normalise_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def generation_metrics(references: list[str], predictions: list[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measure (stemmed, x100) and normalised exact match (x100)."""
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for reference, prediction in zip(references, predictions):
        for name, score in scorer.score(reference, prediction).items():
            totals[name] += score.fmeasure
    count = max(1, len(references))
    metrics = {name: 100.0 * total / count for name, total in totals.items()}
    matches = sum(normalise_answer(r) == normalise_answer(p) for r, p in zip(references, predictions))
    metrics["exact_match"] = 100.0 * matches / count
    return metrics
