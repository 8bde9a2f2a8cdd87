"""Percentile-bootstrap confidence intervals for a metric, and for the difference between two systems.

A test set is a sample; resampling its examples with replacement shows how much
the score would move on another sample of the same size. When a metric is a
mean of per-example scores (`Metric.per_example`), those scores are computed
once and only their means are resampled, vectorised in numpy; corpus metrics
(BLEU, F1, MCC, ...) are recomputed on every resample. Both paths draw the same
example indices from `numpy.random.default_rng(seed)`, so results are
reproducible and the two paths agree for a mean-decomposable metric.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from tunelab.eval.metrics import Metric, align, confusion_cells

_BATCH_CELLS = 1 << 20
"""Index draws per batch: bounds memory at ~8 MiB however large samples x examples gets."""


@dataclass(frozen=True)
class Interval:
    """A score on the full data and the bootstrap interval around it."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        """Plain floats, for JSON reports."""
        return asdict(self)


def format_interval(interval: dict, signed: bool = False) -> str:
    """'value [low, high]' to two decimals, for a report's interval dict (`Interval.as_dict`); `signed` for changes."""
    number = "{:+.2f}" if signed else "{:.2f}"
    return f"{number.format(interval['value'])} [{number.format(interval['low'])}, {number.format(interval['high'])}]"


def _check(samples: int, confidence: float) -> None:
    """Reject settings that would give a meaningless interval."""
    if samples < 1:
        raise ValueError(f"samples must be at least 1, got {samples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")


def _index_batches(n: int, samples: int, seed: int) -> Iterator[np.ndarray]:
    """Resampled example indices, `samples` rows of `n`, in batches so memory stays bounded."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BATCH_CELLS // n)
    for start in range(0, samples, rows):
        yield rng.integers(0, n, size=(min(rows, samples - start), n))


def _percentile_interval(value: float, resampled: np.ndarray, confidence: float) -> Interval:
    """The central `confidence` share of the resampled statistics."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    low, high = np.percentile(resampled, [tail, 100.0 - tail])
    return Interval(float(value), float(low), float(high))


def _per_example(metric: Metric, predictions: list, references: list) -> np.ndarray:
    """Each example's score, computed once for the fast path."""
    return np.array([metric.per_example(p, r) for p, r in zip(predictions, references)], dtype=float)


def _resample(statistic: Callable[[np.ndarray], float], n: int, samples: int, seed: int) -> np.ndarray:
    """`statistic` on every resample of the indices (the slow path: one metric computation each)."""
    return np.array([statistic(indices) for batch in _index_batches(n, samples, seed) for indices in batch])


def _resample_means(scores: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Mean of `scores` on every resample (the fast path: one gather and mean per batch)."""
    return np.concatenate([scores[batch].mean(axis=1) for batch in _index_batches(len(scores), samples, seed)])


def _resample_confusions(metric: Metric, predictions: list, references: list, samples: int, seed: int) -> np.ndarray:
    """A label metric on every resample from counted confusion matrices (the fast path for corpus label metrics):
    each example is one (reference, prediction) cell, and a resample's matrix is its cells' counts."""
    cells, rows, columns = confusion_cells(predictions, references)
    values = []
    for batch in _index_batches(len(cells), samples, seed):
        offsets = np.arange(len(batch))[:, None] * rows * columns
        counts = np.bincount((cells[batch] + offsets).ravel(), minlength=len(batch) * rows * columns)
        values.append(metric.from_confusion(counts.reshape(len(batch), rows, columns)))
    return np.concatenate(values)


def _picked(items: list, indices: np.ndarray) -> list:
    """The items at `indices`, repeats included."""
    return [items[i] for i in indices]


def bootstrap_ci(
    metric: Metric,
    predictions: Sequence,
    references: Sequence | None,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval:
    """The metric on the full data, with a percentile-bootstrap interval over resampled examples."""
    _check(samples, confidence)
    predictions, references = align(predictions, references)
    value = metric.compute(predictions, references)
    if len(predictions) == 1:
        return Interval(value, value, value)
    if metric.per_example is not None:
        scores = _per_example(metric, predictions, references)
        return _percentile_interval(value, _resample_means(scores, samples, seed), confidence)
    if metric.from_confusion is not None:
        return _percentile_interval(
            value, _resample_confusions(metric, predictions, references, samples, seed), confidence
        )
    resampled = _resample(
        lambda idx: metric.compute(_picked(predictions, idx), _picked(references, idx)),
        len(predictions),
        samples,
        seed,
    )
    return _percentile_interval(value, resampled, confidence)


def paired_bootstrap(
    metric: Metric,
    predictions_a: Sequence,
    predictions_b: Sequence,
    references: Sequence | None,
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    references_b: Sequence | None = None,
) -> Interval:
    """score(b) - score(a) on the full data, with an interval from resampling the same examples for both.

    Pairing matters: both systems see the same easy and hard examples in each
    resample, so the interval reflects their difference rather than the test
    set's difficulty. An interval excluding 0 says b and a differ on this data.
    `references_b` scores b against its own version of each reference (a
    counterfactual test rewrites references along with inputs); by default both
    systems share `references`.
    """
    _check(samples, confidence)
    predictions_a, references = align(predictions_a, references)
    predictions_b, references_b = align(predictions_b, references if references_b is None else references_b)
    n = len(references)
    value = metric.compute(predictions_b, references_b) - metric.compute(predictions_a, references)
    if n == 1:
        return Interval(value, value, value)
    if metric.per_example is not None:
        differences = _per_example(metric, predictions_b, references_b) - _per_example(
            metric, predictions_a, references
        )
        return _percentile_interval(value, _resample_means(differences, samples, seed), confidence)

    def difference(indices: np.ndarray) -> float:
        return metric.compute(_picked(predictions_b, indices), _picked(references_b, indices)) - metric.compute(
            _picked(predictions_a, indices), _picked(references, indices)
        )

    return _percentile_interval(value, _resample(difference, n, samples, seed), confidence)
