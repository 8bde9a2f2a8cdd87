"""LoRA adapters on one served base, set up for each decoding step: folded into the base's weights while a batch
uses one adapter, passed per row (PEFT's `adapter_names`) while it mixes several.

Why fold: an unmerged LoRA costs an extra pair of small matmuls per adapted layer on every token (BENCHMARKS.md:
17% slower than the merged run at concurrency 1). Folding writes base + the adapter's delta into the adapted
layers' weights, so a batch of one adapter runs at the merged model's speed. Unfolding copies back the base's
weights, kept aside at the first fold, rather than subtracting the delta: a subtraction leaves rounding behind,
and a server folding back and forth all day would drift away from its base. Only plain LoRA folds (a DoRA
adapter scales by its magnitude vector, which is no weight delta); the others always run per row.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer

BASE = "__base__"
"""PEFT's name, in `adapter_names`, for a row with no adapter."""


class AdapterFolding:
    """The LoRA adapters of one PEFT model, and the one folded into its weights now (None: the weights are the
    base's)."""

    def __init__(self, model, fold: bool = True):
        self.model, self.fold_enabled = model, fold
        self.folded: str | None = None
        self.kept: dict[LoraLayer, torch.Tensor] = {}

    def layers(self) -> list[LoraLayer]:
        return [module for module in self.model.modules() if isinstance(module, LoraLayer)]

    def foldable(self, adapter: str) -> bool:
        """Whether `adapter` is a plain LoRA whose delta can be added to its layers' weights."""
        if not self.fold_enabled or adapter == BASE:
            return False
        holding = [layer for layer in self.layers() if adapter in layer.lora_A]
        return bool(holding) and all(
            adapter not in layer.lora_variant
            and isinstance(getattr(layer.get_base_layer(), "weight", None), torch.Tensor)
            for layer in holding
        )

    def kept_bytes(self) -> int:
        """Memory held by the base weights kept aside for unfolding."""
        return sum(weight.numel() * weight.element_size() for weight in self.kept.values())

    @torch.no_grad()
    def fold(self, adapter: str) -> None:
        """Write base + `adapter`'s delta into the adapted layers' weights."""
        if self.folded == adapter:
            return
        self.unfold()
        for layer in self.layers():
            if adapter not in layer.lora_A:
                continue
            weight = layer.get_base_layer().weight
            if layer not in self.kept:
                self.kept[layer] = weight.detach().clone()
            weight.copy_(self.kept[layer] + layer.get_delta_weight(adapter).to(weight.dtype))
        self.folded = adapter

    @torch.no_grad()
    def unfold(self) -> None:
        """Give the adapted layers the base's own weights back."""
        if self.folded is None:
            return
        for layer, weight in self.kept.items():
            layer.get_base_layer().weight.copy_(weight)
        self.folded = None

    def forget(self, adapter: str) -> None:
        """Before `adapter` is unloaded: unfold it if it is folded, and drop base weights kept for layers no
        adapter uses any more."""
        if self.folded == adapter:
            self.unfold()
        live = set(self.layers())
        self.kept = {layer: weight for layer, weight in self.kept.items() if layer in live}

    @contextmanager
    def using(self, adapters: set[str]) -> Iterator[bool]:
        """The model set up for one step over rows that use `adapters`; yields whether the rows' adapters must be
        passed per row (`adapter_names`). One foldable adapter is folded and the adapters are switched off (the
        weights hold it); the base alone runs with the adapters off and the weights unfolded; a mix runs
        unfolded, per row."""
        (only,) = adapters if len(adapters) == 1 else (None,)
        if only is not None and (only == BASE or self.foldable(only)):
            if only == BASE:
                self.unfold()
            else:
                self.fold(only)
            with self.model.disable_adapter():
                yield False
            return
        self.unfold()
        yield True
