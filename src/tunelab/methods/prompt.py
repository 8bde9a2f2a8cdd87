"""Soft prompt tuning through PEFT: trainable input embeddings prepended to every input (Lester et al. 2021).

Only `num_virtual_tokens` x hidden-size weights train. Initialising them from
the embeddings of a task description (`init: text`) converges faster than
random vectors, as the paper reports, especially for small models.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftConfig, PeftModel, PromptTuningConfig, PromptTuningInit, TaskType, get_peft_model
from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import peft_common
from tunelab.methods.base import cannot_merge
from tunelab.models.family import model_task_of, task_type_of


def check(config: RunConfig) -> None:
    """Prompt tuning only prepends embeddings, so it applies to every model family."""


def peft_config(config: RunConfig, tokenizer_source: str) -> PromptTuningConfig:
    prompt = config.method.prompt
    from_text = prompt.init == "text"
    return PromptTuningConfig(
        task_type=peft_common.PEFT_TASK[model_task_of(config)],
        num_virtual_tokens=prompt.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if from_text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=prompt.init_text if from_text else None,
        tokenizer_name_or_path=tokenizer_source if from_text else None,
    )


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    if task_type_of(config) != "classification":
        peft_common.show_cache_to_prompt_learning(model)
    # The text initialisation tokenises init_text with the model's own tokenizer, saved beside its weights.
    return get_peft_model(model, peft_config(config, model.config._name_or_path))


save = peft_common.save


def load(base: nn.Module, directory: Path, adapter_name: str = "default") -> PeftModel:
    if PeftConfig.from_pretrained(directory).task_type != TaskType.SEQ_CLS:
        peft_common.show_cache_to_prompt_learning(base)
    return peft_common.load(base, directory, adapter_name)


def merge(model):
    cannot_merge("prompt", "its soft prompt is extra input positions, not a change to any weight")
