"""Prefix tuning through PEFT: trainable key/value vectors prepended to every layer's attention (Li & Liang 2021).

With `reparameterize` the prefixes are produced by a two-layer MLP during
training, which the paper found necessary for stable generation training; PEFT
saves the prefixes the MLP produces. For classifiers the default is without it,
as in P-tuning v2: on SST-2 the MLP version stayed at chance for every learning
rate we tried. The prefixes live in the attention cache, not in
the weights, so the method cannot be merged.
"""

from __future__ import annotations

from peft import PrefixTuningConfig, get_peft_model
from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import cannot_merge, peft_common


def check(config: RunConfig) -> None:
    """PEFT's prefix tuning covers encoders, decoders and encoder-decoders."""


def peft_config(config: RunConfig) -> PrefixTuningConfig:
    prefix = config.method.prefix
    return PrefixTuningConfig(
        task_type=peft_common.PEFT_TASK[config.task],
        num_virtual_tokens=prefix.num_virtual_tokens,
        prefix_projection=prefix.reparameterize if prefix.reparameterize is not None else config.task != "classification",
        encoder_hidden_size=prefix.hidden_size,
    )


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    return get_peft_model(model, peft_config(config))


save = peft_common.save
load = peft_common.load


def merge(model):
    cannot_merge("prefix", "its prefixes are extra attention positions, not a change to any weight")
