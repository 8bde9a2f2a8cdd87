"""Full fine-tuning: every weight is trained. The strongest and most expensive baseline."""

from __future__ import annotations

from torch import nn

from tunelab.config import RunConfig


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    return model
