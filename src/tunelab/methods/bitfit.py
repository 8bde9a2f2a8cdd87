"""BitFit: train only the bias terms (and a classifier's new head), Ben Zaken et al. 2022.

About 0.1% of a BERT's weights, often close to full fine-tuning on GLUE-size
tasks. Architectures without bias terms (Llama, Gemma, SmolLM2, T5: their linear
and norm layers have none) cannot use it: `check` refuses the registry models
known to lack them before loading, and `apply` refuses any other such model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import delta, head
from tunelab.methods.base import MethodError
from tunelab.models.family import task_type_of
from tunelab.models.registry import REGISTRY


def _no_bias_error(model_name: str) -> MethodError:
    return MethodError(
        f"method 'bitfit' trains bias terms, and model '{model_name}' has none "
        "(Llama-, Gemma- and T5-style models use bias-free layers); use lora or ia3 for it"
    )


def check(config: RunConfig) -> None:
    registered = REGISTRY.get(config.model.name)
    if registered is not None and not registered.has_bias_terms:
        raise _no_bias_error(config.model.name)


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    head_prefix = head.head_name(model) + "." if task_type_of(config) == "classification" else None
    kept = delta.freeze_all_but(
        model, lambda name: name.endswith(".bias") or (head_prefix is not None and name.startswith(head_prefix))
    )
    if not any(name.endswith(".bias") for name in kept):
        raise _no_bias_error(config.model.name)
    return model


def save(model: nn.Module, directory: Path) -> None:
    delta.save(model, directory, "bitfit")


load = delta.load
merge = delta.already_merged
