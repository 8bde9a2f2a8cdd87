"""What `tunelab eval|forgetting|robustness|bias` evaluate: a registry model, a model folder or hub id, or a run.

A target knows how it answers: a decoder or encoder-decoder generates text for any task phrased as an
instruction; a classifier (a run with a trained head) can only score classification tasks whose labels are
its own. A multi-task run answers each task its own way (`Target.for_task`, as the run's objective routes it:
`tunelab.train.objectives`): a multi-head encoder with that task's head, per-task adapters with that task's
adapter (a task without one with the shared adapter, or the base model). Evaluation places the model on the GPU
when there is one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import RunConfig
from tunelab.eval import EvaluationError
from tunelab.models.family import model_task_of
from tunelab.models.loading import load_model, load_tokenizer, on_device, resolve_source
from tunelab.models.registry import REGISTRY
from tunelab.runs import RunDir
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run

_FAMILY_TASK = {"decoder": "causal_lm", "seq2seq": "seq2seq"}

DEFAULT_BATCH_SIZE = 32
"""Examples per forward pass or generation batch for a pretrained model; a run uses its training.eval_batch_size."""

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class TargetError(EvaluationError):
    """A model reference that cannot be evaluated as asked; the message says what to give instead."""


@dataclass
class Target:
    name: str
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    task: str
    """'classification' (answers through its head), 'causal_lm' or 'seq2seq' (answers by generating)."""
    labels: list[str] | None = None
    """A classifier's labels, in head order."""
    batch_size: int = 32
    max_length: int = 1024
    """Longest prompt in tokens when the task sets none; longer prompts lose the end of their content, never the answer cue."""
    route: Callable[[str], Target] | None = None
    """A multi-task model's way to answer one task (a head, an adapter); None when one model answers everything."""
    unavailable: str | None = None
    """Why this target cannot answer at all (a multi-head run asked for a task it has no head for)."""

    @property
    def generates(self) -> bool:
        return self.task != "classification"

    @property
    def precision(self) -> str:
        """What the weights are stored in ('fp32', or e.g. 'bf16+fp32' for a bf16 base under fp32 adapters): said
        beside every score, since one model scores differently in bf16 and in fp32."""
        dtypes = {DTYPE_NAMES.get(p.dtype, str(p.dtype).removeprefix("torch.")) for p in self.model.parameters()}
        return "+".join(sorted(dtypes))

    def for_task(self, task: str) -> Target:
        """The target that answers `task`."""
        return self.route(task) if self.route is not None else self


def trained_target(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    config: RunConfig,
    labels: list[str] | None,
    name: str,
    batch_size: int | None = None,
) -> Target:
    """How a model of the run's objective answers tasks (the model in training, or one loaded from a run): through
    its head or by generating, and per task as the objective routes it."""
    batch_size = batch_size or config.training.eval_batch_size
    objective = objective_of(config)
    task = "classification" if objective.answers_by_head else model_task_of(config)
    target = Target(name, on_device(model), tokenizer, task, labels, batch_size)
    target.route = objective.route(target, model)
    return target


def _task_of_model(reference: str, source: str) -> str:
    """causal_lm or seq2seq for a model that can answer instructions; an encoder alone cannot."""
    registered = REGISTRY.get(reference)
    if registered is not None:
        family = registered.family
    else:
        config = AutoConfig.from_pretrained(source)
        architectures = config.architectures or []
        family = (
            "seq2seq"
            if config.is_encoder_decoder
            else "decoder"
            if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
            else "encoder"
        )
    if family not in _FAMILY_TASK:
        raise TargetError(
            f"{reference} is an encoder without a trained task head, so it cannot answer tasks; "
            "fine-tune it (tunelab train) and evaluate the run directory instead"
        )
    return _FAMILY_TASK[family]


def load_target(reference: str, batch_size: int | None = None) -> Target:
    """A run directory (its tuned model), or a registry name / model folder / hub id (the pretrained model);
    `batch_size` defaults to the run's training.eval_batch_size, or DEFAULT_BATCH_SIZE for a model."""
    if (Path(reference) / "run.json").exists():
        loaded = load_run(RunDir(reference))
        return trained_target(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, reference, batch_size)
    source = resolve_source(reference)  # refuses, in seconds, a name that is no model here
    task = _task_of_model(reference, source)
    model: PreTrainedModel = load_model(task, source)
    model.eval()
    return Target(reference, on_device(model), load_tokenizer(source), task, None, batch_size or DEFAULT_BATCH_SIZE)
