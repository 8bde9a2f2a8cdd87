"""Linear probing: freeze the pretrained body, train only the new task head.

The cheapest baseline, and the one that says how much of the task the
pretrained features already solve; defined for classifiers only (a decoder has
no separate head to train: its output layer is the pretrained vocabulary
projection). Only the head is saved; merging writes the whole model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import delta
from tunelab.methods.base import MethodError

HEAD_MODULES = ("classifier", "score", "classification_head")
"""Attribute names transformers gives a sequence classifier's new head, across architectures."""


def head_name(model: nn.Module) -> str:
    for name in HEAD_MODULES:
        if isinstance(getattr(model, name, None), nn.Module):
            return name
    raise MethodError(
        f"{type(model).__name__} has no classification head ({', '.join(HEAD_MODULES)}); "
        "method 'head' needs a sequence-classification model"
    )


def check(config: RunConfig) -> None:
    """The task check (classification only) is part of config validation."""


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    prefix = head_name(model) + "."
    delta.freeze_all_but(model, lambda name: name.startswith(prefix))
    return model


def save(model: nn.Module, directory: Path) -> None:
    delta.save(model, directory, "head")


load = delta.load
merge = delta.already_merged
