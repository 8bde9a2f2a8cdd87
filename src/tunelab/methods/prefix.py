"""Prefix tuning through PEFT: trainable key/value vectors prepended to every layer's attention (Li & Liang 2021).

With `reparameterize` the prefixes are produced by a two-layer MLP during
training, which the paper found necessary for stable generation training; PEFT
saves the prefixes the MLP produces. For classifiers the default is without it,
as in P-tuning v2: on SST-2 the MLP version stayed at chance for every learning
rate we tried. The prefixes live in the attention cache, not in
the weights, so the method cannot be merged.

transformers 5.24 renamed the models' attention-cache argument from
`past_key_values` to `cache`, which PEFT 0.21 does not know. Classifiers get
their prefixes through `route_prefix_to_cache` (PEFT alone refuses every
BERT-style classifier there), and generation through
`peft_common.show_cache_to_prompt_learning` (PEFT alone silently drops the
prefixes when generating).
"""

from __future__ import annotations

import inspect
from pathlib import Path

from peft import PeftConfig, PeftModel, PrefixTuningConfig, TaskType, get_peft_model
from torch import nn
from transformers import MODEL_MAPPING, AutoConfig

from tunelab.config import RunConfig
from tunelab.methods import peft_common
from tunelab.methods.base import MethodError, cannot_merge
from tunelab.models.family import model_task_of, task_type_of
from tunelab.models.loading import resolve_source

CACHE_ARGUMENTS = ("cache", "past_key_values")
"""What a backbone's forward calls its attention cache: transformers >= 5.24, then earlier releases."""


def _cache_argument(backbone_forward, model_name: str) -> str:
    """The name under which a classifier's backbone takes an attention cache, or MethodError when it takes none."""
    accepted = inspect.signature(backbone_forward).parameters
    for name in CACHE_ARGUMENTS:
        if name in accepted:
            return name
    raise MethodError(
        f"{model_name} takes no attention cache, and prefix tuning adds its prefixes through that cache; "
        "use method.name=prompt (soft prompts on the input) or lora for this model"
    )


def check(config: RunConfig) -> None:
    """A classifier's encoder must take an attention cache and have positions for the prefix plus the longest
    input (its positions start after the prefix); decoders and encoder-decoders always qualify.

    Read from the model's config, before any weights load, so a run that cannot work never starts.
    """
    if task_type_of(config) != "classification":
        return
    model_config = AutoConfig.from_pretrained(
        resolve_source(config.model.name, config.model.revision),
        revision=config.model.revision,
        trust_remote_code=config.model.trust_remote_code,
    )
    if type(model_config) in MODEL_MAPPING:
        backbone = MODEL_MAPPING[type(model_config)]
        _cache_argument(backbone.forward, f"{config.model.name} ({backbone.__name__})")
    positions = getattr(model_config, "max_position_embeddings", None)
    prefix = config.method.prefix.num_virtual_tokens
    needed = config.data.max_length + prefix
    if positions and needed > positions:
        raise MethodError(
            f"prefix tuning shifts the encoder's positions by method.prefix.num_virtual_tokens={prefix}, so "
            f"data.max_length={config.data.max_length} plus the prefix needs {needed} positions and "
            f"{config.model.name} has {positions}; set data.max_length={positions - prefix} (or lower), "
            "or use method.name=prompt or lora"
        )


def peft_config(config: RunConfig) -> PrefixTuningConfig:
    prefix = config.method.prefix
    return PrefixTuningConfig(
        task_type=peft_common.PEFT_TASK[model_task_of(config)],
        num_virtual_tokens=prefix.num_virtual_tokens,
        prefix_projection=prefix.reparameterize
        if prefix.reparameterize is not None
        else task_type_of(config) != "classification",
        encoder_hidden_size=prefix.hidden_size,
    )


def route_prefix_to_cache(classifier: nn.Module) -> None:
    """Let PEFT pass prefixes to a sequence classifier: the instance's forward takes `past_key_values` and hands
    it to the backbone under the name the backbone uses.

    This is the call PEFT makes for models whose forward names `past_key_values`, so the classifier computes
    what PEFT computed before the rename (the backbone shifts positions by the prefix length, as ever).
    """
    backbone = getattr(classifier, classifier.base_model_prefix, classifier)
    name = _cache_argument(backbone.forward, type(classifier).__name__)
    forward = classifier.forward
    if peft_common.PEFT_CACHE_KEY in inspect.signature(forward).parameters:
        return  # PEFT passes the cache to this forward itself

    def forward_with_prefix(
        input_ids=None, attention_mask=None, inputs_embeds=None, labels=None, past_key_values=None, **kwargs
    ):
        if past_key_values is not None:
            kwargs[name] = past_key_values
        return forward(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, labels=labels, **kwargs
        )

    classifier.forward = forward_with_prefix


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    if task_type_of(config) == "classification":
        route_prefix_to_cache(model)
    else:
        peft_common.show_cache_to_prompt_learning(model)
    return get_peft_model(model, peft_config(config))


save = peft_common.save


def load(base: nn.Module, directory: Path, adapter_name: str = "default") -> PeftModel:
    if PeftConfig.from_pretrained(directory).task_type == TaskType.SEQ_CLS:
        route_prefix_to_cache(base)
    else:
        peft_common.show_cache_to_prompt_learning(base)
    return peft_common.load(base, directory, adapter_name)


def merge(model):
    cannot_merge("prefix", "its prefixes are extra attention positions, not a change to any weight")
