"""Adaptation methods: each module has one `apply(model, config, task)` returning the model to train.

The registry maps `method.name` to its module so that adding a method is one
file and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import full, lora


@dataclass
class TrainableReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {"trainable_params": self.trainable, "total_params": self.total, "trainable_percent": round(self.percent, 4)}

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({self.percent:.2f}%)"


def count_parameters(model: nn.Module) -> TrainableReport:
    params = {id(p): p for p in model.parameters()}.values()  # tied weights count once
    return TrainableReport(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


METHODS = {"full": full, "lora": lora}


def apply_method(model: nn.Module, config: RunConfig) -> tuple[nn.Module, TrainableReport]:
    """Adapt the model with the configured method and report what is trainable."""
    adapted = METHODS[config.method.name].apply(model, config)
    return adapted, count_parameters(adapted)
