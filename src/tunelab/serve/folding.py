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

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from peft.tuners.lora import LoraLayer

logger = logging.getLogger("tunelab.serve")

BASE = "__base__"
"""PEFT's name, in `adapter_names`, for a row with no adapter."""


class AdapterFolding:
    """The LoRA adapters of one PEFT model, and the one folded into its weights now (None: the weights are the
    base's). Called before every decoding step, so it changes the model only when the step's adapters differ
    from the last step's: the adapted layers, which adapters fold, and whether PEFT's adapter layers are switched
    off are remembered (each is a walk over every module of the model), until `changed` says adapters came or
    went."""

    STEADY = 32
    """Decoding steps an adapter must have been alone in its batch before it is folded."""

    def __init__(self, model, fold: bool = True):
        self.model, self.fold_enabled = model, fold
        self.folded: str | None = None
        self.active: str | None = None
        """PEFT's active adapter as this object last set it (None: not set here)."""
        self.alone: tuple[str | None, int] = (None, 0)
        """The adapter alone in the last decoding steps (None: a mix), and for how many steps in a row."""
        self.kept: dict[LoraLayer, torch.Tensor] = {}
        self.layers_off = False
        self._layers: list[LoraLayer] | None = None
        self._foldable: dict[str, bool] = {}

    def layers(self) -> list[LoraLayer]:
        if self._layers is None:
            self._layers = [module for module in self.model.modules() if isinstance(module, LoraLayer)]
        return self._layers

    def changed(self) -> None:
        """Adapters were loaded or deleted, or switched by other code: walk the model again when next asked."""
        self._layers, self._foldable, self.active = None, {}, None

    def foldable(self, adapter: str) -> bool:
        """Whether `adapter` is a plain LoRA whose delta can be added to its layers' weights."""
        if not self.fold_enabled or adapter == BASE:
            return False
        if adapter not in self._foldable:
            holding = [layer for layer in self.layers() if adapter in layer.lora_A]
            self._foldable[adapter] = bool(holding) and all(
                adapter not in layer.lora_variant
                and isinstance(getattr(layer.get_base_layer(), "weight", None), torch.Tensor)
                for layer in holding
            )
        return self._foldable[adapter]

    def kept_bytes(self) -> int:
        """Memory held by the base weights kept aside for unfolding."""
        return sum(weight.numel() * weight.element_size() for weight in self.kept.values())

    @torch.no_grad()
    def fold(self, adapter: str) -> None:
        """Write base + `adapter`'s delta into the adapted layers' weights."""
        if self.folded == adapter:
            return
        self.unfold()
        added = False
        for layer in self.layers():
            if adapter not in layer.lora_A:
                continue
            weight = layer.get_base_layer().weight
            if layer not in self.kept:
                self.kept[layer] = weight.detach().clone()
                added = True
            weight.copy_(self.kept[layer] + layer.get_delta_weight(adapter).to(weight.dtype))
        self.folded = adapter
        if added:
            logger.info(
                "folding LoRA adapters into their base: %.0f MB of base weights kept to unfold them "
                "(--no-fold-adapters saves it)",
                self.kept_bytes() / 2**20,
            )

    @torch.no_grad()
    def unfold(self) -> None:
        """Give the adapted layers the base's own weights back."""
        if self.folded is None:
            return
        for layer, weight in self.kept.items():
            layer.get_base_layer().weight.copy_(weight)
        self.folded = None

    def restore(self) -> None:
        """The model as PEFT left it: the base's weights, adapter layers on (for code that switches adapters by
        PEFT's own means)."""
        self.unfold()
        self._switch_layers(off=False)
        self.active = None  # the caller may switch adapters

    @contextmanager
    def changing(self) -> Iterator[None]:
        """Around loading or deleting an adapter: the model as PEFT left it while PEFT changes it (no adapter
        folded, adapter layers on, so new layers match the others), walked again afterwards."""
        self.restore()
        try:
            yield
        finally:
            self.changed()

    def _switch_layers(self, off: bool) -> None:
        if off != self.layers_off:
            if off:
                self.model.base_model.disable_adapter_layers()
            else:
                self.model.base_model.enable_adapter_layers()
            self.layers_off = off

    @contextmanager
    def using(self, adapters: set[str], decoding: bool = True) -> Iterator[bool]:
        """The model set up for one forward pass over rows that use `adapters`; yields whether the rows' adapters
        must be passed per row (`adapter_names`).

        The base alone runs with the adapter layers off and the weights unfolded. One adapter runs folded when it
        is folded already, or once it has been alone in `STEADY` decoding steps in a row; until then it runs as
        PEFT's active adapter (unmerged, but without the per-row hooks). A mix runs unfolded, per row. Folding
        rewrites every adapted weight (160 ms for an all-linear LoRA on smollm2 on a 2-core CPU, about what 10
        steps gain from it), so it waits for a steady batch: traffic that moves between adapters would fold and
        unfold at every change, which costs more than it saves."""
        (only,) = adapters if len(adapters) == 1 else (None,)
        if decoding:
            self.alone = (only, self.alone[1] + 1 if only == self.alone[0] else 1)
        steady = only == self.alone[0] and self.alone[1] >= self.STEADY
        if only == BASE or (only is not None and (only == self.folded or (steady and self.foldable(only)))):
            if only == BASE:
                self.unfold()
            else:
                self.fold(only)
            self._switch_layers(off=True)
            yield False
            return
        self.unfold()
        self._switch_layers(off=False)
        if only is not None:
            self._activate(only)
            yield False
            return
        yield True

    def _activate(self, adapter: str) -> None:
        """Make `adapter` PEFT's active adapter (a walk over the model's modules, so only when it changes)."""
        if self.active != adapter:
            self.model.set_adapter(adapter)
            self.active = adapter
