"""What `tunelab eval|forgetting|robustness|bias` evaluate: a registry model, a model folder or hub id, or a run.

A target knows how it answers: a decoder or encoder-decoder generates text for any task phrased as an
instruction; a classifier (a run with a trained head) can only score classification tasks whose labels are
its own. Evaluation places the model on the GPU when there is one.
"""

from __future__ import annotations

from tunelab.eval import EvaluationError

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from tunelab.models.loading import load_model, load_tokenizer, resolve_source
from tunelab.models.registry import REGISTRY
from tunelab.runs import RunDir

_FAMILY_TASK = {"decoder": "causal_lm", "seq2seq": "seq2seq"}


class TargetError(EvaluationError):
    """A model reference that cannot be evaluated as asked; the message says what to give instead."""


@dataclass
class Target:
    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: str
    """'classification' (answers through its head), 'causal_lm' or 'seq2seq' (answers by generating)."""
    labels: list[str] | None = None
    """A classifier's labels, in head order."""
    batch_size: int = 32
    max_length: int = 1024
    """Longest prompt in tokens; longer prompts lose the end of their content, never the answer cue."""

    @property
    def generates(self) -> bool:
        return self.task != "classification"


def on_device(model: PreTrainedModel) -> PreTrainedModel:
    """The model on the GPU when there is one (evaluation and multi-task scoring run there)."""
    return model.to("cuda") if torch.cuda.is_available() else model


def _task_of_model(reference: str, source: str) -> str:
    """causal_lm or seq2seq for a model that can answer instructions; an encoder alone cannot."""
    registered = REGISTRY.get(reference)
    if registered is not None:
        family = registered.family
    else:
        config = AutoConfig.from_pretrained(source)
        architectures = config.architectures or []
        family = ("seq2seq" if config.is_encoder_decoder
                  else "decoder" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) else "encoder")
    if family not in _FAMILY_TASK:
        raise TargetError(f"{reference} is an encoder without a trained task head, so it cannot answer tasks; "
                          "fine-tune it (tunelab train) and evaluate the run directory instead")
    return _FAMILY_TASK[family]


def load_target(reference: str, batch_size: int = 32) -> Target:
    """A run directory (its tuned model), or a registry name / model folder / hub id (the pretrained model)."""
    if (Path(reference) / "run.json").exists():
        from tunelab.pipeline import load_run

        model, tokenizer, config, labels = load_run(RunDir(reference))
        return Target(reference, on_device(model), tokenizer, config.task, labels, batch_size)
    source = resolve_source(reference)  # refuses, in seconds, a name that is no model here
    task = _task_of_model(reference, source)
    model = load_model(task, source)
    model.eval()
    return Target(reference, on_device(model), load_tokenizer(source), task, None, batch_size)

