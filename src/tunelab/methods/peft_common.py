"""What every PEFT-implemented method shares: task types, saving, loading and merging.

PEFT saves `adapter_config.json` + `adapter_model.safetensors`, which
`PeftModel.from_pretrained(base, dir)` loads in any PEFT-aware tool, so these
methods need no format of ours.
"""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import ModelCard
from peft import PeftModel, TaskType

from tunelab.config import RunConfig
from tunelab.kinds import answers_by_head
from tunelab.models.family import model_family

PEFT_CACHE_KEY = "past_key_values"
"""The generation input in which PEFT's prompt learning looks for, and puts, the attention cache."""

GENERATING_TASK = {"decoder": TaskType.CAUSAL_LM, "encoder-decoder": TaskType.SEQ_2_SEQ_LM}
"""PEFT's task type for a model that answers by generating, by the model's family."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_TAG = "base_model:adapter:"
"""The model card tag by which PEFT links an adapter to its base model on the hub."""


def peft_task(config: RunConfig) -> TaskType:
    """PEFT's task type for a run's model: a sequence classifier when its kind of example answers through a head,
    else what the model's family generates with (PEFT places prompts and caches differently for each)."""
    if answers_by_head(config):
        return TaskType.SEQ_CLS
    return GENERATING_TASK[model_family(config.model)]


def save(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def name_base_model(directory: Path, base: str) -> None:
    """Name `base` as the base model of every PEFT adapter saved under `directory` (a task-adapters run keeps one
    per task folder): in its adapter_config.json and in PEFT's model card.

    PEFT records the path the base was loaded from, for a registry model a path into this machine's packages or
    cache, which another machine cannot load. The files are rewritten after PEFT saved them rather than the name
    set on the model before: PEFT's save looks a recorded name that is not a local folder up on the hub.
    """
    settings = list(Path(directory).rglob(ADAPTER_CONFIG))
    for path in settings:
        _name_base_in_settings(path, base)
    for path in Path(directory).rglob("README.md") if settings else ():
        _name_base_in_card(path, base)


def _name_base_in_settings(path: Path, base: str) -> None:
    settings = json.loads(path.read_text(encoding="utf-8"))
    if settings.get("tokenizer_name_or_path") == settings["base_model_name_or_path"]:  # prompt tuning from text
        settings["tokenizer_name_or_path"] = base
    settings["base_model_name_or_path"] = base
    path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _name_base_in_card(path: Path, base: str) -> None:
    """The card's `base_model` metadata and PEFT's `base_model:adapter:...` tag, which the hub reads."""
    card = ModelCard.load(path)
    card.data.base_model = base
    card.data.tags = [f"{ADAPTER_TAG}{base}" if tag.startswith(ADAPTER_TAG) else tag for tag in card.data.tags or []]
    card.save(path)


def load(base, directory: Path, adapter_name: str = "default"):
    """The saved adapter on `base`, under `adapter_name` (several runs' adapters can share one base)."""
    return PeftModel.from_pretrained(base, directory, adapter_name=adapter_name)


def merge_tuner(model):
    """Fold a tuner's update (LoRA family, IA3) into the base weights and drop the PEFT wrapper."""
    return model.merge_and_unload()


def show_cache_to_prompt_learning(model) -> None:
    """Keep PEFT's prefix and prompt tuning right in `generate` on transformers >= 5.24.

    transformers 5.24 renamed the cache that generation hands the model from `past_key_values` to `cache`. PEFT
    0.21 still reads `past_key_values` there, so it sees no cache on any step: prefix tuning then puts its prefixes
    into a cache the model ignores (answers come from the untuned base) and prompt tuning prepends its soft prompt
    again at every new token. Under the old name, which the model's forward still accepts, PEFT sees the cache and
    generates as it did before the rename (tested against a token-by-token greedy decode). Called on the base model
    before PEFT wraps it; a no-op on releases that still use the old name.
    """
    prepare = model.prepare_inputs_for_generation

    def prepare_under_peft_name(*args, **kwargs):
        inputs = prepare(*args, **kwargs)
        if "cache" in inputs and PEFT_CACHE_KEY not in inputs:
            inputs[PEFT_CACHE_KEY] = inputs.pop("cache")
        return inputs

    model.prepare_inputs_for_generation = prepare_under_peft_name
