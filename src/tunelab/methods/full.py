"""Full fine-tuning: every weight is trained. The strongest and most expensive baseline."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.config import RunConfig

SAVES_WHOLE_MODEL = True
"""The saved folder is a complete checkpoint: the pipeline loads it as the base, and `load` has nothing to add."""


def check(config: RunConfig) -> None:
    """Full fine-tuning runs wherever the model fits."""


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model


def save(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(base, directory: Path):
    return base


def merge(model):
    return model
