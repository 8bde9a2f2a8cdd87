"""Adaptation methods, registered by name: `method.name` in the config picks one module here.

Every method module provides the same five things, so the pipeline never
branches on the method:

- ``check(config)``: raise ``MethodError`` before any data or model loads when the
  method cannot run here (e.g. qlora without CUDA), saying what to use instead;
- ``apply(model, config)``: the model to train, with exactly the method's weights trainable;
- ``save(model, directory)``: write what training changed, in a format the ecosystem loads;
- ``load(base, directory)``: rebuild the tuned model from a freshly loaded base and ``save``'s output;
- ``merge(model)``: a plain transformers model with the update folded in, or ``MethodError``
  for methods whose update cannot be folded into the base weights.

A method may also provide ``load_options(config)``: extra ``from_pretrained``
settings its training base needs (qlora's 4-bit quantisation); and
``SAVES_WHOLE_MODEL = True`` when ``save`` writes a complete checkpoint (full
fine-tuning), which is then loaded as its own base; and ``FREEZES_BASE = True`` when
every pretrained weight stays frozen (its adapters are PEFT's, kept in fp32), so a bf16
run may load the base in bf16.

Adding a method is one module and one line in ``METHODS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType

import torch
from torch import nn

from tunelab.config import RunConfig
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
        return {"trainable_params": self.trainable, "total_params": self.total, "trainable_percent": round(self.percent, 4)}

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
        "(`tunelab predict RUN`), or train with lora, dora, rslora, ia3 or bitfit when a standalone merged model is needed"
    )


def _registry() -> dict[str, ModuleType]:
    # Imported here, not at the top: the method modules import MethodError and cannot_merge from this package.
    from tunelab.methods import adapter, bitfit, full, head, ia3, lora, prefix, prompt

    return {"full": full, "head": head, "bitfit": bitfit, "lora": lora, "dora": lora, "rslora": lora, "qlora": lora,
            "adapter": adapter, "prefix": prefix, "prompt": prompt, "ia3": ia3}


METHODS: dict[str, ModuleType] = _registry()


def method_module(name: str) -> ModuleType:
    return METHODS[name]


def check_method(config: RunConfig) -> None:
    """Fail before loading anything when the configured method cannot run on this machine or model."""
    method_module(config.method.name).check(config)


def apply_method(model: nn.Module, config: RunConfig) -> tuple[nn.Module, TrainableReport]:
    """Adapt the model with the configured method and report what is trainable."""
    adapted = method_module(config.method.name).apply(model, config)
    report = count_parameters(adapted)
    if report.trainable == 0:
        raise MethodError(f"method '{config.method.name}' left no trainable parameters in {type(model).__name__}; "
                          "pick another method for this model")
    return adapted, report


def base_load_options(config: RunConfig, precision: str = "fp32") -> dict:
    """Extra `from_pretrained` settings for the base a method trains on.

    A generative model's base that the method freezes (``FREEZES_BASE``) is loaded in
    bf16 when training runs in bf16: autocast computes its matmuls in bf16 either way,
    and frozen weights need no fp32 master copy, so this halves weight memory and
    spares the per-step casts. PEFT keeps the adapters themselves in fp32.
    Classifiers keep an fp32 base, since their head trains in the base's dtype.
    """
    module = method_module(config.method.name)
    options = module.load_options(config) if hasattr(module, "load_options") else {}
    frozen = getattr(module, "FREEZES_BASE", False) and config.task_type != "classification"
    if precision == "bf16" and frozen and "quantization_config" not in options:
        options["dtype"] = torch.bfloat16
    return options
