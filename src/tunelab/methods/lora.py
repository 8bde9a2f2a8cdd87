"""LoRA through PEFT: frozen base weights plus trainable low-rank updates.

PEFT already implements LoRA, saves adapters that `PeftModel.from_pretrained`
loads, and knows each architecture's attention projections, so we only map our
config onto `peft.LoraConfig`. For classifiers PEFT also keeps the new head
trainable (and saves it with the adapter).
"""

from __future__ import annotations

from peft import LoraConfig, TaskType, get_peft_model
from torch import nn

from tunelab.config import RunConfig

PEFT_TASK = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def peft_config(config: RunConfig) -> LoraConfig:
    lora = config.method.lora
    # 'attention' means PEFT's per-architecture default: the query and value projections.
    targets = None if lora.target_modules == "attention" else lora.target_modules
    return LoraConfig(
        task_type=PEFT_TASK[config.task],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
    )


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    return get_peft_model(model, peft_config(config))
