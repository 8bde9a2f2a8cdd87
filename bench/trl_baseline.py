"""The canonical recipe a user writes today: TRL's SFTTrainer on a prompt/completion dataset with a PEFT LoraConfig.

Written the way TRL's documentation shows it, and changed only where the benchmark
must hold things equal (steps, batch size, learning rate, seed, LoRA settings,
maximum length). `fair=False` keeps every other TRL default (bf16=True, gradient
checkpointing, padding to the batch's longest example); `fair=True` only sets
bf16=False, for CPUs that emulate bf16; `best=True` is TRL's fastest documented recipe
(`best_settings`), the comparison that matters on a GPU.
"""

from __future__ import annotations

import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer

from tunelab.models.attention import flash_attention_available
from tunelab.models.kernels import liger_available


def best_settings() -> dict:
    """TRL's own fastest recipe, as its documentation gives it: padding-free batches (no padding computed), no
    gradient checkpointing, flash-attention where installed (which reads the padding-free boundaries), and Liger's
    kernels where installed; bf16 as TRL defaults. "Installed" is judged by tunelab's own checks, so TRL's best and
    tunelab's `auto` get the same kernels on the same machine."""
    flash = flash_attention_available()
    return {
        "padding_free": True,
        "gradient_checkpointing": False,
        "use_liger_kernel": liger_available(),
        "model_init_kwargs": {"attn_implementation": "flash_attention_2" if flash else "sdpa"},
    }


def trl_trainer(
    model_dir: str,
    pairs: list[tuple[str, str]],
    *,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    lora_r: int,
    lora_alpha: int,
    lora_dropout: float,
    max_length: int,
    fair: bool,
    conversational: bool = True,
    best: bool = False,
) -> SFTTrainer:
    """An SFTTrainer on prompt/completion rows, loss on completions: conversational rows (TRL applies the chat
    template) for chat models, plain text rows for base models without a chat template."""
    if conversational:
        rows = [
            {
                "prompt": [{"role": "user", "content": prompt}],
                "completion": [{"role": "assistant", "content": completion}],
            }
            for prompt, completion in pairs
        ]
    else:
        rows = [{"prompt": prompt, "completion": completion} for prompt, completion in pairs]
    dataset = Dataset.from_list(rows)
    args = SFTConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        # padding-free TRL refuses max_length without its packing (which would change what a step holds). Of the
        # first 1,000 DialogSum training dialogues only the 807th is longer than 1,024 tokens (1,104 with the chat
        # template), so runs of up to 806 examples (e.g. 15 steps x batch 32) cut nothing either way
        max_length=None if best else max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # TRL's bf16 default refuses to start on CPU without it
        **({"bf16": False} if fair else {}),
        **(best_settings() if best else {}),
    )
    peft_config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(model=model_dir, args=args, train_dataset=dataset, peft_config=peft_config)
