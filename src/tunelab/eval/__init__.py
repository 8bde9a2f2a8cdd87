"""Evaluation: predictions from a model, the metric each task type calls for, suites, forgetting,
robustness, bias and human ratings."""

from tunelab.errors import TunelabError


class EvaluationError(TunelabError, ValueError):
    """An evaluation request that cannot be carried out as given; the message says what to change."""
