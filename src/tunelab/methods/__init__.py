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

from types import ModuleType

import torch
from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import adapter, bitfit, full, head, ia3, lora, prefix, prompt
from tunelab.methods.base import MethodError, TrainableReport, count_parameters

__all__ = [
    "METHODS",
    "MethodError",
    "TrainableReport",
    "apply_method",
    "base_load_options",
    "check_method",
    "method_module",
]


METHODS: dict[str, ModuleType] = {
    "full": full,
    "head": head,
    "bitfit": bitfit,
    "lora": lora,
    "dora": lora,
    "rslora": lora,
    "qlora": lora,
    "adapter": adapter,
    "prefix": prefix,
    "prompt": prompt,
    "ia3": ia3,
}


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
        raise MethodError(
            f"method '{config.method.name}' left no trainable parameters in {type(model).__name__}; "
            "pick another method for this model"
        )
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
