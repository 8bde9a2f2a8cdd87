"""Pretrained models: the offline registry and loading for a task."""
