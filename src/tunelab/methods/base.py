"""What every method module shares: its error, the report of what trains, and the helpers that freeze weights
and refuse merges. Kept apart from the registry in `__init__`, which imports the method modules."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from tunelab.config import method_names, spoken_list
from tunelab.errors import TunelabError


class MethodError(TunelabError, ValueError):
    """A method that cannot do what was asked (run here, merge, load), with what to do instead."""


@dataclass
class TrainableReport:
    trainable: int
    total: int

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / self.total if self.total else 0.0

    def as_dict(self) -> dict:
        return {
            "trainable_params": self.trainable,
            "total_params": self.total,
            "trainable_percent": round(self.percent, 4),
        }

    def __str__(self) -> str:
        return f"{self.trainable:,} of {self.total:,} parameters trainable ({self.percent:.2f}%)"


def count_parameters(model: nn.Module) -> TrainableReport:
    params = {id(p): p for p in model.parameters()}.values()  # tied weights count once
    return TrainableReport(sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params))


def train_only(model: nn.Module, keep) -> list[str]:
    """Make trainable exactly the parameters whose name `keep(name)` accepts, freeze the rest; returns the kept names."""
    kept = []
    for name, parameter in model.named_parameters():
        trainable = bool(keep(name))
        parameter.requires_grad_(trainable)
        if trainable:
            kept.append(name)
    return kept


def cannot_merge(method: str, why: str):
    """Refuse `tunelab merge` for a method whose update is not a change of existing weights."""
    raise MethodError(
        f"method '{method}' cannot be merged into the base weights: {why}. Use the run directly "
        f"(`tunelab predict RUN`), or train with {spoken_list(method_names(lambda traits: traits.mergeable))} when "
        "a standalone merged model is needed"
    )
