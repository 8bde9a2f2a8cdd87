"""Adaptation methods, registered by name: `method.name` in the config picks one module here.

Every method module provides the same five things, so the pipeline never
branches on the method:

- ``check(config)``: raise ``MethodError`` before any data or model loads when the
  method cannot run here (e.g. qlora without CUDA), saying what to use instead;
- ``apply(model, config)``: the model to train, with exactly the method's weights trainable;
- ``save(model, directory)``: write what training changed, in a format the ecosystem loads;
- ``load(base, directory)``: rebuild the tuned model from a freshly loaded base and ``save``'s output; a method
  whose row says ``peft_adapter`` takes ``adapter_name`` too (``load(base, directory, adapter_name="default")``),
  the name under which `tunelab serve` and `tunelab predict --adapter` load each run's adapter onto one shared base;
- ``merge(model)``: a plain transformers model with the update folded in, or ``MethodError``
  for methods whose update cannot be folded into the base weights.

A method may also provide ``load_options(config)``: extra ``from_pretrained``
settings its training base needs (qlora's 4-bit quantisation); and
``SAVES_WHOLE_MODEL = True`` when ``save`` writes a complete checkpoint (full
fine-tuning), which is then loaded as its own base; and ``FREEZES_BASE = True`` when
every pretrained weight stays frozen (its adapters are PEFT's, kept in fp32), so a bf16
run may load the base in bf16.

A method's facts (default learning rates, the task types it applies to, LoRA family, prompt learning,
mergeable, its settings sections) are its row of ``tunelab.config.METHOD_TRAITS``, which validation, help
texts and messages read. Adding a method is its module, one line in ``METHODS`` and its row, or, for a method
defined outside tunelab, one ``register_method(name, module, traits)`` call. A settings section of its own is
also a field of ``MethodConfig``; a method without one needs no change there. The registry and the table are
checked against each other at import, so a module without a row (or a row without a module) fails at once.
"""

from __future__ import annotations

import inspect
from types import ModuleType

import torch
from torch import nn

from tunelab.config import METHOD_TRAITS, MethodConfig, MethodTraits, RunConfig
from tunelab.methods import adapter, bitfit, full, head, ia3, lora, prefix, prompt
from tunelab.methods.base import MethodError, TrainableReport, count_parameters
from tunelab.models.family import task_type_of

__all__ = [
    "METHODS",
    "MethodError",
    "TrainableReport",
    "apply_method",
    "base_load_options",
    "check_registry",
    "check_method",
    "method_module",
    "register_method",
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


def check_registry(modules: dict[str, ModuleType], table: dict[str, MethodTraits]) -> None:
    """The method modules and the traits table name the same methods, each row's settings sections exist, and a
    module loads the way its row says its runs are loaded: a method that is only half added fails here, at import
    or registration, instead of at its first run or first `tunelab serve`."""
    unlisted, orphaned = sorted(modules.keys() - table.keys()), sorted(table.keys() - modules.keys())
    if unlisted:
        raise MethodError(
            f"method module(s) {', '.join(unlisted)} have no row in tunelab.config.METHOD_TRAITS; add a row "
            "(default learning rates, task types, ...), or register the method with register_method"
        )
    if orphaned:
        raise MethodError(
            f"METHOD_TRAITS has row(s) {', '.join(orphaned)} without a module in tunelab.methods.METHODS; "
            "add the module, or register the method with register_method"
        )
    for name, traits in table.items():
        unknown = sorted(set(traits.settings) - MethodConfig.model_fields.keys())
        if unknown:
            raise MethodError(
                f"method '{name}' reads settings section(s) {', '.join(unknown)}, which MethodConfig does not have; "
                "add the section to MethodConfig, or drop it from the method's row"
            )
        if traits.peft_adapter and "adapter_name" not in inspect.signature(modules[name].load).parameters:
            raise MethodError(
                f"method '{name}' saves a PEFT adapter (peft_adapter in its row), which runs of one base load side by "
                "side under their own names: give its load an adapter_name argument, "
                "load(base, directory, adapter_name='default'), passed on to PeftModel.from_pretrained"
            )


check_registry(METHODS, METHOD_TRAITS)


def register_method(name: str, module: ModuleType, traits: MethodTraits) -> None:
    """Add a method defined outside tunelab: its module (check, apply, save, load, merge) and its row of facts,
    checked together, so `method.name: NAME` validates from then on and takes its learning rate from the row."""
    if name in METHODS or name in METHOD_TRAITS:
        raise MethodError(f"method '{name}' is already registered; pick another name")
    missing = [part for part in ("check", "apply", "save", "load", "merge") if not hasattr(module, part)]
    if missing:
        raise MethodError(f"method module {module.__name__} lacks {', '.join(missing)}; every method provides them")
    check_registry({**METHODS, name: module}, {**METHOD_TRAITS, name: traits})
    METHODS[name] = module
    METHOD_TRAITS[name] = traits


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
    frozen = getattr(module, "FREEZES_BASE", False) and task_type_of(config) != "classification"
    if precision == "bf16" and frozen and "quantization_config" not in options:
        options["dtype"] = torch.bfloat16
    return options
