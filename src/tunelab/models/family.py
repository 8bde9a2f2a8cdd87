"""The model family — encoder, decoder or encoder-decoder — read from the model itself, never declared.

A run says what kind of example it trains on (classification, generation, ...); whether a generation run trains a
decoder (the answer after the prompt, in one sequence) or an encoder-decoder (the prompt into the encoder, the
answer out of the decoder) follows from the model it names. Reading it from the model's own config means a user
cannot declare a family the weights do not have, and a new hub model needs no setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from tunelab.config import ConfigError, ModelConfig, RunConfig
from tunelab.kinds import objective_name
from tunelab.models.reference import pretrained_root
from tunelab.models.registry import REGISTRY

Family = Literal["encoder", "decoder", "encoder-decoder"]

DECODER_ENDINGS = ("ForCausalLM", "LMHeadModel")
"""How a decoder's class names end in a config's `architectures` (LlamaForCausalLM, GPT2LMHeadModel)."""


def model_family(model: ModelConfig) -> Family:
    """The family of the model a config names (a run directory: of the pretrained model its chain of runs starts
    from): a registry entry's own, else a local folder's or hub model's config.json."""
    reference = pretrained_root(model.name)
    registered = REGISTRY.get(reference)
    if registered is not None:
        return registered.family
    folder = Path(reference).expanduser()
    if (folder / "config.json").is_file():
        return family_of_config(json.loads((folder / "config.json").read_text(encoding="utf-8")))
    return family_of_config(_hub_config(model.model_copy(update={"name": reference})))


def family_of_config(config: dict) -> Family:
    """A transformers config (as a dict) read as a family. Without `architectures` (a config written by hand), a
    model type that transformers builds as a causal LM but not as a masked LM is a decoder (BERT has both heads and
    is an encoder)."""
    if config.get("is_encoder_decoder"):
        return "encoder-decoder"
    architectures = config.get("architectures") or []
    if architectures:
        return "decoder" if any(name.endswith(DECODER_ENDINGS) for name in architectures) else "encoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = config.get("model_type")
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "decoder" if causal else "encoder"


def _hub_config(model: ModelConfig) -> dict:
    """A hub model's config.json (one small download, cached by huggingface_hub)."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model.name, revision=model.revision, trust_remote_code=model.trust_remote_code
        )
    except OSError as error:
        raise ConfigError(
            f"model.name '{model.name}' is not a registry name (`tunelab models list`), a local folder or a "
            f"reachable hub model, so its family (encoder, decoder, encoder-decoder) cannot be read: {error}"
        ) from None
    return config.to_dict()


def task_type_of(config: RunConfig) -> str:
    """TRANSITIONAL, until the model family is passed down where it is asked (issue 30's family change): the word
    the model-loading, encoding and PEFT code below still asks by, now read from the run's kind of example, its
    objective and the model's family instead of declared. 'classification' (a head answers), 'language_modeling'
    (raw text), else 'seq2seq' for an encoder-decoder and 'causal_lm' for a decoder."""
    objective = objective_name(config)
    if objective in ("classifier", "multi_head"):
        return "classification"
    if objective == "language_model":
        return "language_modeling"
    return "seq2seq" if model_family(config.model) == "encoder-decoder" else "causal_lm"


def model_task_of(config: RunConfig) -> str:
    """TRANSITIONAL (as `task_type_of`): the kind of model a run loads, a language-modelling run a causal LM."""
    task_type = task_type_of(config)
    return "causal_lm" if task_type == "language_modeling" else task_type
