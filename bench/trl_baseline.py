"""The canonical recipe a user writes today: TRL's SFTTrainer on a prompt/completion dataset with a PEFT LoraConfig.

Written the way TRL's documentation shows it, and changed only where the benchmark
must hold things equal (steps, batch size, learning rate, seed, LoRA settings,
maximum length). `fair=False` keeps every other TRL default (bf16=True, gradient
checkpointing, padding to the batch's longest example); `fair=True` only sets
bf16=False, for CPUs that emulate bf16.
"""

from __future__ import annotations

import tempfile

import torch
from datasets import Dataset
from peft import LoraConfig
from trl import SFTConfig, SFTTrainer


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
        max_length=max_length,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),  # TRL's bf16 default refuses to start on CPU without it
        **({"bf16": False} if fair else {}),
    )
    peft_config = LoraConfig(
        r=lora_r,
        lora_alpha=lora_alpha,
        lora_dropout=lora_dropout,
        target_modules=["q_proj", "v_proj"],
        task_type="CAUSAL_LM",
    )
    return SFTTrainer(model=model_dir, args=args, train_dataset=dataset, peft_config=peft_config)
