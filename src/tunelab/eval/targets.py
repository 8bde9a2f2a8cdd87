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
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from tunelab.config import ModelConfig, RunConfig
from tunelab.eval import EvaluationError
from tunelab.kinds.base import Family
from tunelab.models.family import model_family
from tunelab.models.loading import load_model, load_tokenizer, on_device, resolve_source
from tunelab.runs import RunDir
from tunelab.train.objectives import objective_of
from tunelab.train.trained import load_run

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
    family: Family
    """The model's family: how a generating target reads a prompt (after it, as a decoder, or into its encoder)."""
    labels: list[str] | None = None
    """A classifier's labels, in head order."""
    batch_size: int = 32
    max_length: int = 1024
    """Longest prompt in tokens when the task sets none; longer prompts lose the end of their content, never the answer cue."""
    route: Callable[[str], Target] | None = None
    """A multi-task model's way to answer one task (a head, an adapter); None when one model answers everything."""
    unavailable: str | None = None
    """Why this target cannot answer at all (a multi-head run asked for a task it has no head for)."""
    head: bool = False
    """It answers through a trained classification head over `labels`, not by generating."""
    reward: bool = False
    """Its head is a reward model's one score of a prompt and answer (`labels` is its one output): it scores the
    answers of a task of a kind `scored_by_reward`, and answers nothing."""

    @property
    def generates(self) -> bool:
        return not self.head

    @property
    def decoder(self) -> bool:
        """It reads a prompt and continues it in one sequence (an encoder-decoder reads it into its encoder)."""
        return self.family == "decoder"

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
    family = model_family(config.model)
    target = Target(
        name,
        on_device(model),
        tokenizer,
        family,
        labels,
        batch_size,
        head=objective.answers_by_head,
        reward=objective.scores_answers,
    )
    target.route = objective.route(target, model)
    return target


def _generating_family(reference: str) -> Family:
    """The family of a pretrained model that can answer instructions (a decoder or an encoder-decoder); an encoder
    alone cannot."""
    family = model_family(ModelConfig(name=reference))
    if family == "encoder":
        raise TargetError(
            f"{reference} is an encoder without a trained task head, so it cannot answer tasks; "
            "fine-tune it (tunelab train) and evaluate the run directory instead"
        )
    return family


def load_target(
    reference: str, batch_size: int | None = None, tokenizer: PreTrainedTokenizerBase | None = None
) -> Target:
    """A run directory (its tuned model), or a registry name / model folder / hub id (the pretrained model, read with
    its own tokenizer or `tokenizer`); `batch_size` defaults to the run's training.eval_batch_size, or
    DEFAULT_BATCH_SIZE for a model."""
    if (Path(reference) / "run.json").exists():
        loaded = load_run(RunDir(reference))
        return trained_target(loaded.model, loaded.tokenizer, loaded.config, loaded.labels, reference, batch_size)
    source = resolve_source(reference)  # refuses, in seconds, a name that is no model here
    family = _generating_family(reference)
    model: PreTrainedModel = load_model(source, family)
    model.eval()
    tokenizer = tokenizer or load_tokenizer(source)
    return Target(reference, on_device(model), tokenizer, family, None, batch_size or DEFAULT_BATCH_SIZE)


def base_target(reference: str, tuned: str, batch_size: int | None = None) -> Target:
    """The model `tuned` was tuned from, asked as `tuned` is: when `tuned` is a run directory tuned from `reference`
    (the same source), the pretrained weights read with the run's saved tokenizer, which carries what the run set on
    it (a chat run's template and closing token, which a base model such as gemma3-270m lacks), so both answer the
    same prompts and stop on the same token. Any other pair: `load_target(reference)`."""
    if not (Path(tuned) / "run.json").exists() or (Path(reference) / "run.json").exists():
        return load_target(reference, batch_size)
    run = RunDir(tuned)
    config = run.config()
    if resolve_source(config.model.name, config.model.revision) != resolve_source(reference):
        return load_target(reference, batch_size)
    return load_target(reference, batch_size, load_tokenizer(str(run.model_dir)))
