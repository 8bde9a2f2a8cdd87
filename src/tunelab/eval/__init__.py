"""Evaluation: predictions from a model, and the metric each task type calls for."""
