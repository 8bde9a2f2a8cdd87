"""What every PEFT-implemented method shares: task types, saving, loading and merging.

PEFT saves `adapter_config.json` + `adapter_model.safetensors`, which
`PeftModel.from_pretrained(base, dir)` loads in any PEFT-aware tool, so these
methods need no format of ours.
"""

from __future__ import annotations

from pathlib import Path

from peft import PeftConfig, PeftModel, TaskType, get_peft_model

from tunelab.methods import MethodError

PEFT_TASK = {"classification": TaskType.SEQ_CLS, "causal_lm": TaskType.CAUSAL_LM, "seq2seq": TaskType.SEQ_2_SEQ_LM}


def wrap(model, peft_config: PeftConfig):
    return get_peft_model(model, peft_config)


def save(model, directory: Path) -> None:
    model.save_pretrained(directory, safe_serialization=True)


def load(base, directory: Path):
    return PeftModel.from_pretrained(base, directory)


def merge_tuner(model):
    """Fold a tuner's update (LoRA family, IA3) into the base weights and drop the PEFT wrapper."""
    return model.merge_and_unload()


def refuse_merge(method: str, why: str):
    raise MethodError(
        f"method '{method}' cannot be merged into the base weights: {why}. Use the run directly "
        "(`tunelab predict RUN`, or PeftModel.from_pretrained on its model/ folder), or train with "
        "lora, dora, rslora, ia3 or bitfit when a standalone merged model is needed"
    )
