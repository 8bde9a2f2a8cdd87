"""IA3 through PEFT: learned vectors that rescale keys, values and feed-forward activations (Liu et al. 2022).

The fewest trainable weights of any method here (one vector per adapted
projection); the rescaling is linear, so it merges into the base weights.
"""

from __future__ import annotations

from peft import IA3Config, get_peft_model
from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import peft_common
from tunelab.models.family import model_task_of

FREEZES_BASE = True
"""Every pretrained weight stays frozen and PEFT keeps the adapters in fp32: a bf16 run may load the base in bf16."""


def check(config: RunConfig) -> None:
    """IA3 applies to every architecture PEFT maps (or any, given explicit target modules)."""


def peft_config(config: RunConfig) -> IA3Config:
    ia3 = config.method.ia3
    explicit = isinstance(ia3.target_modules, list)
    return IA3Config(
        task_type=peft_common.PEFT_TASK[model_task_of(config)],
        target_modules=ia3.target_modules if explicit else None,
        feedforward_modules=ia3.feedforward_modules if explicit else None,
    )


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    return get_peft_model(model, peft_config(config))


save = peft_common.save
load = peft_common.load
merge = peft_common.merge_tuner
