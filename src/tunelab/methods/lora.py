"""The LoRA family through PEFT: frozen base weights plus trainable low-rank updates.

One module serves four method names, which differ only in how PEFT is told to
build the update:

- ``lora``: the update B·A scaled by alpha / r;
- ``rslora``: scaled by alpha / sqrt(r), which keeps higher ranks learning (Kalajdzievski 2023);
- ``dora``: weight-decomposed LoRA, a learned magnitude per output plus a LoRA direction (Liu et al. 2024);
- ``qlora``: LoRA over a base quantised to 4 bits by bitsandbytes (Dettmers et al. 2023), which
  needs CUDA: on other machines `check` stops the run before anything loads.

PEFT knows each architecture's attention projections and keeps a classifier's
new head trainable (saved with the adapter), so we only map our config.
"""

from __future__ import annotations

import importlib.util

import torch
from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
from torch import nn

from tunelab.config import RunConfig
from tunelab.methods import peft_common
from tunelab.methods.base import MethodError
from tunelab.models.family import model_task_of

FREEZES_BASE = True
"""Every pretrained weight stays frozen and PEFT keeps the adapters in fp32: a bf16 run may load the base in bf16."""


def check(config: RunConfig) -> None:
    if config.method.name != "qlora":
        return
    if not torch.cuda.is_available():
        raise MethodError(
            "method 'qlora' quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU, and "
            "this machine has none; use method.name=lora (same adapter, fp32/bf16 base) here"
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        raise MethodError(
            "method 'qlora' needs the bitsandbytes package: `pip install bitsandbytes`, or use method.name=lora"
        )


def load_options(config: RunConfig) -> dict:
    """qlora trains on a base loaded in 4 bits; the other variants on the ordinary base."""
    if config.method.name != "qlora":
        return {}
    from transformers import BitsAndBytesConfig

    return {
        "quantization_config": BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=config.method.qlora.quant_type,
            bnb_4bit_use_double_quant=config.method.qlora.double_quant,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
    }


def peft_config(config: RunConfig) -> LoraConfig:
    lora = config.method.lora
    # 'attention' means PEFT's per-architecture default: the query and value projections.
    targets = None if lora.target_modules == "attention" else lora.target_modules
    return LoraConfig(
        task_type=peft_common.PEFT_TASK[model_task_of(config)],
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_rslora=config.method.name == "rslora",
        use_dora=config.method.name == "dora",
    )


def apply(model: nn.Module, config: RunConfig) -> nn.Module:
    if config.method.name == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=config.training.gradient_checkpointing
        )
    return get_peft_model(model, peft_config(config))


save = peft_common.save
load = peft_common.load
merge = peft_common.merge_tuner
