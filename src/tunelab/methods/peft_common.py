"""What every PEFT-implemented method shares: task types, saving, loading and merging.

PEFT saves `adapter_config.json` + `adapter_model.safetensors`, which
`PeftModel.from_pretrained(base, dir)` loads in any PEFT-aware tool, so these
methods need no format of ours.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftModel, TaskType

PEFT_TASK = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def save(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(base, directory: Path):
    return PeftModel.from_pretrained(base, directory)


def merge_tuner(model):
    """Fold a tuner's update (LoRA family, IA3) into the base weights and drop the PEFT wrapper."""
    return model.merge_and_unload()
