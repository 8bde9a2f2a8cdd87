"""What every PEFT-implemented method shares: task types, saving, loading and merging.

PEFT saves `adapter_config.json` + `adapter_model.safetensors`, which
`PeftModel.from_pretrained(base, dir)` loads in any PEFT-aware tool, so these
methods need no format of ours.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel, TaskType

PEFT_CACHE_KEY = "past_key_values"
"""The generation input in which PEFT's prompt learning looks for, and puts, the attention cache."""

PEFT_TASK = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def save(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


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
